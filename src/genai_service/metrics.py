"""Prometheus metrics of the service, served on `/metrics`.

Engines record tokens, latencies and outcomes as they happen; gauges that describe the
current state (queue depth, active sequences) are read from the service state at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

# Latency buckets in seconds, fine at the low end where CPU decode steps live.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

QUEUE_DEPTH = Gauge("genai_queue_depth", "Requests waiting for a generation slot.")
ACTIVE_SEQUENCES = Gauge(
    "genai_active_sequences", "Generations running or admitted in the engine.", ["model"]
)
GENERATED_TOKENS = Counter("genai_generated_tokens", "Completion tokens generated.", ["model"])
PROMPT_TOKENS = Counter(
    "genai_prompt_tokens", "Prompt tokens of the generations that ran (tokens in).", ["model"]
)
DIRECT_STREAMS = Counter(
    "genai_direct_streams",
    "Streams whose tokens the engine process wrote to the client itself (DIRECT_STREAM).",
    ["model"],
)
PREFIX_REUSED_TOKENS = Counter(
    "genai_prefix_reused_tokens", "Prompt tokens taken from the prefix cache.", ["model"]
)
# The engine's own step counters (llama.cpp): where a step's time goes, for profiling.
ENGINE_STEPS = Counter("genai_engine_steps", "Batch steps run by the engine.", ["model"])
ENGINE_STEP_SECONDS = Counter(
    "genai_engine_step_seconds",
    "Wall time of the engine's batch steps (building the batch, llama_decode, sampling, text).",
    ["model"],
)
ENGINE_DECODE_SECONDS = Counter(
    "genai_engine_decode_seconds",
    "Wall time inside llama_decode (the model's forward pass).",
    ["model"],
)
ENGINE_STEP_TOKENS = Counter(
    "genai_engine_step_tokens", "Tokens sampled by the engine's batch steps.", ["model"]
)
ENGINE_HOST_CPU_SECONDS = Counter(
    "genai_engine_host_cpu_seconds",
    "CPU time of the engine's scheduler thread outside llama_decode: building batches, "
    "sampling, text and stop checks, sending tokens (the per-token overhead around the model).",
    ["model"],
)
TTFT = Histogram(
    "genai_time_to_first_token_seconds",
    "From submission to the first generated token.",
    ["model"],
    buckets=_TTFT_BUCKETS,
)


class PerRequestHistogram(Collector):
    """A histogram (by model) that takes a whole request's observations at once.

    `prometheus_client.Histogram.observe` takes a lock twice per value; at one value per
    generated token that is work on the hot path of every stream. A request counts its values
    in a `Tally` (one bisect each) and adds them here when it ends; /metrics shows the same
    `_bucket`, `_count` and `_sum` series as a `Histogram`.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, buckets
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # model -> counts, [sum]
        REGISTRY.register(self)

    def tally(self) -> Tally:
        return Tally(self.bounds)

    def add(self, model: str, tally: Tally) -> None:
        if not tally.total_count:
            return
        with self._lock:
            counts, total = self._series.setdefault(model, ([0] * (len(self.bounds) + 1), [0.0]))
            for i, n in enumerate(tally.counts):
                counts[i] += n
            total[0] += tally.total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        with self._lock:
            series = {m: (list(c), t[0]) for m, (c, t) in self._series.items()}
        les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for model, (counts, total) in series.items():
            cumulative, running = [], 0
            for le, n in zip(les, counts, strict=True):
                running += n
                cumulative.append((le, running))
            family.add_metric([model], cumulative, total)
        yield family


class Tally:
    """One request's observations for a `PerRequestHistogram`, counted locally."""

    __slots__ = ("bounds", "counts", "total", "total_count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.total_count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = less or equal).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.total_count += 1


ITL = PerRequestHistogram(
    "genai_inter_token_latency_seconds",
    "Time between two generated tokens of one request (added when the request ends).",
    _ITL_BUCKETS,
)
REQUESTS = Counter(
    "genai_requests",
    "Finished generations by outcome: stop, length, cancelled, error.",
    ["model", "outcome"],
)
REJECTED = Counter("genai_rejected_requests", "Requests refused with 429 (queue full or timeout).")
ENGINE_CRASHES = Counter(
    "genai_engine_crashes",
    "Engine processes that died (signal or exit code), restarted by the supervisor.",
    ["model", "cause"],
)
ENGINE_UP = Gauge(
    "genai_engine_up",
    "1 while the model's engine serves, 0 while its process restarts (read at scrape time).",
    ["model"],
)
DATABASE_UP = Gauge(
    "genai_database_up", "1 while the database answers with a current schema, 0 while not."
)


class EngineRecorder:
    """`record(kind, value)` for one model: what only the engine can see, into Prometheus.

    The llama.cpp scheduler calls it in whichever process it runs; the engine process ships the
    calls to the API process with each step, which replays them here. (Latency, tokens and
    outcomes are recorded by the GenerationService, for every engine.)
    """

    def __init__(self, model: str) -> None:
        self._prefix = PREFIX_REUSED_TOKENS.labels(model)
        self._steps = ENGINE_STEPS.labels(model)
        self._step_s = ENGINE_STEP_SECONDS.labels(model)
        self._decode_s = ENGINE_DECODE_SECONDS.labels(model)
        self._step_tokens = ENGINE_STEP_TOKENS.labels(model)
        self._host_cpu = ENGINE_HOST_CPU_SECONDS.labels(model)

    def __call__(self, kind: str, value: Any) -> None:
        if kind == "prefix_reused":
            self._prefix.inc(value)
        elif kind == "steps":  # (steps, step s, decode s, tokens, host CPU s) since the last
            steps, step_s, decode_s, tokens, host_cpu_s = value
            self._steps.inc(steps)
            self._step_s.inc(step_s)
            self._decode_s.inc(decode_s)
            self._step_tokens.inc(tokens)
            self._host_cpu.inc(host_cpu_s)
