"""The llama.cpp engine core: the model weights, the llama context and the batch scheduler.

It runs either in its own process (the default: `ProcessCore` in `client.py` starts
`python -m genai_service.engines.llama_cpp`, whose `__main__` calls `main` here), so a native fault in llama.cpp cannot take the API
server down, or in the API process (`InProcessCore`, ENGINE_PROCESS=false), which `bench/`
compares it with.

The wire protocol, pickled objects over two pipes (the API -> core one a Unix socket pair):
- API -> core: the `CoreConfig` first; then ("submit", id, token_ids, SamplingParams, direct),
  ("cancel", id), ("stop",). `direct` is None, or (head, tail, chunked) of a direct stream
  (`engines.base.DirectStream`), whose client socket follows as one SCM_RIGHTS message.
- core -> API: ("ready", system_info, n_ctx_per_slot), ("failed", message) at start-up; then one ("step", events,
  records, pending) per scheduler iteration, where an event is (id, GenerationChunk),
  (id, (text,)) for a plain text chunk (most of them: a tuple unpickles 4x faster than the
  dataclass), or (id, error message). With a stream interval (STREAM_INTERVAL_MS), a stream's
  plain text chunks are held and joined until the interval has passed since its last one.
  A direct stream's text goes to its socket instead (`direct.py`); its end is a "step" of its
  own, sent by the sender thread once the text is written: (id, DirectReport) followed by its
  last chunk with no text, or by an error ("cancelled" when it was cancelled).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from genai_service.engines.base import Cancellation, GenerationChunk, SamplingParams
from genai_service.engines.llama_cpp import llama_log
from genai_service.engines.llama_cpp.direct import DirectSender, DirectWriter
from genai_service.engines.llama_cpp.scheduler import BatchScheduler, Emit, Record
from genai_service.log_config import configure_logging

# The self-test prompt: long enough (over 64 tokens) that its prefill takes llama.cpp's batched
# matrix-multiply kernels, the path a one-token warm-up never reaches (a build using CPU features
# the host lacks, AMX under some hypervisors, faults there).
SELF_TEST_PROMPT = (
    "Write a short, friendly note to a colleague who is starting on the team next week. "
    "Mention where the documentation lives, who to ask about the build, that the coffee "
    "machine on the third floor is the good one, and that the first week is for reading code, "
    "asking questions and shipping one small change. Keep it under a hundred words."
)
SELF_TEST_TOKENS = 8


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Everything the core needs to load a model; crosses the process boundary (picklable)."""

    model_path: str
    model_id: str
    n_ctx: int = 4096
    n_threads: int = 1
    n_batch: int = 512
    n_gpu_layers: int = 0
    n_parallel: int = 4
    prefill_chunk: int = 256
    prefix_cache: bool = True
    batch_invariant: bool = False
    kv_cache_tokens: int | None = None  # the unified KV buffer; None: default_kv_cells
    prompt_cache_mb: int = 0  # idle slots' KV in RAM (unified buffer); 0: they stay in the buffer
    stream_interval: float = 0.0  # seconds; a stream's text within it goes out as one chunk
    log_level: str = "info"  # the engine process logs as the API process does
    log_json: bool = False


def load_model(path: str | Path, *, n_gpu_layers: int = 0, vocab_only: bool = False) -> Any:
    """A `llama_cpp._internals.LlamaModel`; `vocab_only` loads the tokenizer without weights."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    llama_log.install()  # llama.cpp's lines into our logs, at their own levels
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = vocab_only
    if n_gpu_layers:
        # -1: every layer (llama.cpp reads any count above the model's as "all").
        params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers
    return LlamaModel(path_model=str(path), params=params, verbose=False)


def system_info() -> str:
    """llama.cpp's compiled-in CPU features, e.g. "CPU : SSE3 = 1 | AVX2 = 1 | ..."."""
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode(errors="replace").strip()


def start_scheduler(
    config: CoreConfig, record: Record, flush: Any = None
) -> tuple[Any, BatchScheduler]:
    model = load_model(config.model_path, n_gpu_layers=config.n_gpu_layers)
    scheduler = BatchScheduler(
        model,
        model_id=config.model_id,
        n_ctx_per_slot=config.n_ctx,
        n_parallel=config.n_parallel,
        n_threads=config.n_threads,
        n_batch=config.n_batch,
        prefill_chunk=config.prefill_chunk,
        prefix_cache=config.prefix_cache,
        batch_invariant=config.batch_invariant,
        kv_cache_tokens=config.kv_cache_tokens,
        prompt_cache_bytes=config.prompt_cache_mb << 20,
        record=record,
        flush=flush,
    )
    return model, scheduler


def self_test(model: Any, scheduler: BatchScheduler) -> None:
    """Generate a few tokens from a real prompt; raises if the engine cannot."""
    tokens = list(model.tokenize(SELF_TEST_PROMPT.encode(), add_bos=True, special=False))
    done: queue.SimpleQueue[GenerationChunk | BaseException] = queue.SimpleQueue()

    def emit(item: GenerationChunk | BaseException) -> None:
        if isinstance(item, BaseException) or item.finish_reason is not None:
            done.put(item)

    params = SamplingParams(max_tokens=SELF_TEST_TOKENS, temperature=0.0)
    scheduler.submit(tokens, params, Cancellation(), emit)
    result = done.get(timeout=600)
    if isinstance(result, BaseException):
        raise RuntimeError(f"engine self-test failed: {result}") from result
    if result.completion_tokens < 1 and result.finish_reason != "stop":
        raise RuntimeError("engine self-test produced no tokens")


class InProcessCore:
    """The scheduler on a thread of this process (ENGINE_PROCESS=false)."""

    def __init__(self, config: CoreConfig, record: Record) -> None:
        self._config = config
        self._record = record
        self._model: Any = None
        self._scheduler: BatchScheduler | None = None
        self.unavailable: str | None = None
        self.n_ctx_per_slot = config.n_ctx

    def start(self) -> None:
        self._model, self._scheduler = start_scheduler(self._config, self._record)
        self.n_ctx_per_slot = self._scheduler.n_ctx_per_slot
        self_test(self._model, self._scheduler)

    @property
    def active(self) -> int:
        return self._scheduler.active if self._scheduler is not None else 0

    @property
    def pending(self) -> int:
        return self._scheduler.pending if self._scheduler is not None else 0

    def submit(
        self, tokens: list[int], params: SamplingParams, cancel: Cancellation, emit: Emit
    ) -> None:
        if self._scheduler is None:
            raise RuntimeError("engine is not loaded")
        self._scheduler.submit(tokens, params, cancel, emit)

    def release(self, handle: Any) -> None:
        """Nothing to do: the scheduler drops a cancelled request before its next step."""

    def close(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        model, self._model = self._model, None
        if scheduler is not None:
            scheduler.close()
        if model is not None:
            model.close()


class _Held:
    """A stream's text held back by the stream interval: when its last chunk went out, and the
    text since."""

    __slots__ = ("parts", "sent_at")

    def __init__(self) -> None:
        self.sent_at = float("-inf")  # the first token goes out at once
        self.parts: list[str] = []


# --- the engine process --------------------------------------------------------------------------
def main(config: CoreConfig, commands: Connection, events: Connection) -> None:
    """Entry point of the engine process."""
    # The API process handles Ctrl-C and SIGTERM (sent to the whole process group by a terminal,
    # systemd or `docker stop`), drains its streams, and then stops us through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(config.log_level, config.log_json)
    outbox: list[tuple[Any, ...]] = []
    records: list[tuple[str, Any]] = []  # both filled and flushed on the scheduler thread
    lock = threading.Lock()
    scheduler: BatchScheduler | None = None

    def send(message: tuple[Any, ...]) -> None:
        with lock:  # the main, scheduler and sender threads all send
            events.send(message)

    interval = config.stream_interval
    # Streams whose text is held back (STREAM_INTERVAL_MS). Scheduler thread only, like outbox.
    holding: dict[int, _Held] = {}

    def send_held(req_id: int, held: _Held) -> None:
        del holding[req_id]
        outbox.append((req_id, ("".join(held.parts),)))
        held.parts = []

    # Direct streams (their text goes to the client's socket, written by the sender thread).
    # Added by the main thread before the submit, otherwise used on the scheduler thread only.
    directs: dict[int, DirectWriter] = {}
    sender: DirectSender | None = None

    def end_direct(req_id: int, last: Any) -> None:
        """The stream's report (once its text is written), then `last`: its last chunk or error."""
        writer = directs.pop(req_id, None)
        if writer is not None:
            assert sender is not None
            sender.end(req_id, writer, [(req_id, last)])

    def flush() -> None:
        # Scheduler thread: the step's chunks and metric records as one message.
        if directs:
            for req_id, writer in list(directs.items()):
                if writer.cancel.cancelled:  # by the API, or the client hung up
                    end_direct(req_id, "cancelled")
        if holding:
            now = time.monotonic()
            for req_id, held in list(holding.items()):
                if now - held.sent_at >= interval:
                    send_held(req_id, held)
                    held.sent_at = now
        if not outbox and not records:
            return
        batch = ("step", outbox[:], records[:], scheduler.pending if scheduler else 0)
        outbox.clear()
        records.clear()
        send(batch)

    def record(kind: str, value: Any) -> None:
        records.append((kind, value))  # scheduler thread only; flushed with the step

    try:
        model, scheduler = start_scheduler(config, record, flush)
        self_test(model, scheduler)
    except BaseException as exc:
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    # The collector runs on the scheduler thread between two decodes: keep the start-up's
    # objects out of its full collections.
    gc.collect()
    gc.freeze()
    # Steps sent before this (the self-test's metric records) are dropped by the API process.
    sender = DirectSender(lambda events: send(("step", events, [], scheduler.pending)))
    send(("ready", system_info(), scheduler.n_ctx_per_slot))

    cancels: dict[int, Cancellation] = {}
    command_socket = socket.socket(fileno=os.dup(commands.fileno()))  # for recv_fds

    def direct_emitter(req_id: int, writer: DirectWriter) -> Emit:
        assert sender is not None
        text = sender.text

        def emit(item: GenerationChunk | BaseException) -> None:
            if req_id not in directs:
                return  # ended already (cancelled): the API process gets its report
            if isinstance(item, BaseException):
                end_direct(req_id, str(item) or type(item).__name__)
                cancels.pop(req_id, None)
                return
            if item.text:
                text(writer, item.text)
            if item.finish_reason is not None:
                end_direct(req_id, dataclasses.replace(item, text=""))
                cancels.pop(req_id, None)

        return emit

    def emitter(req_id: int) -> Emit:
        held = _Held()

        def emit(item: GenerationChunk | BaseException) -> None:
            if isinstance(item, BaseException):
                holding.pop(req_id, None)
                outbox.append((req_id, str(item) or type(item).__name__))
                cancels.pop(req_id, None)
                return
            if item.finish_reason is None and item.logprobs is None:
                if interval:
                    # flush() sends it once `interval` has passed since the last chunk: the
                    # first token at once, then one chunk per interval instead of per token.
                    held.parts.append(item.text)
                    holding[req_id] = held
                else:
                    outbox.append((req_id, (item.text,)))
                return
            if req_id in holding:
                send_held(req_id, held)  # the held text goes before this chunk
            outbox.append((req_id, item))
            if item.finish_reason is not None:
                cancels.pop(req_id, None)

        return emit

    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):
            break  # the API process is gone
        kind = message[0]
        if kind == "submit":
            _, req_id, tokens, params, direct = message
            cancel = cancels[req_id] = Cancellation()
            emit = emitter(req_id)
            if direct is not None:
                # The client's socket, sent right after the message (SCM_RIGHTS).
                _, (fd,), _, _ = socket.recv_fds(command_socket, 1, 1)
                writer = directs[req_id] = DirectWriter(fd, *direct, cancel)
                emit = direct_emitter(req_id, writer)
            try:
                scheduler.submit(tokens, params, cancel, emit)
            except RuntimeError:
                # The scheduler thread died (a bug, already logged): let the supervisor restart us.
                send(("step", [(req_id, "engine stopped")], [], 0))
                os._exit(70)
        elif kind == "cancel":
            cancel = cancels.pop(message[1], None)
            if cancel is not None:
                cancel.cancel()
        elif kind == "stop":
            break
    scheduler.close()
    sender.close()
    for writer in directs.values():
        writer.close()
