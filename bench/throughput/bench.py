"""Throughput under concurrency: genai-service against llama.cpp's own `llama-server`.

Both servers run the same GGUF with the same threads, slots, context per slot and batch
sizes. Both start once and stay up; each concurrency level runs on one, then on the other
(the order flips every round), so each round gives a paired ratio per level that a slow spell
of a shared host moves on both sides. An async load generator streams greedy
`/v1/chat/completions` requests (fixed questions under one system prompt, fixed `max_tokens`) at
each concurrency level (`ignore_eos`: every reply is `max_tokens` long on both servers) and
records time to first token, inter-token latency and aggregate output tokens/s. Prints the table with the ratios, writes JSON and a PNG under bench/results/.

`llama-server` is built from the llama.cpp copy vendored in the llama-cpp-python sdist of the
installed version (the same source as the engine) with the engine's portable build flags
(`scripts/llama-cpp-wheel.sh --flags`; CMAKE_ARGS overrides them, as for `make install`), into
~/.cache/genai-service/llama-server/<version>-<hash of the flags>: a build made with other
flags (an earlier -march=native one, say) is never reused.

    make bench-throughput            # or: .venv/bin/python bench/throughput/bench.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from genai_service.engines.threads import default_threads

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genai-service"

SYSTEM = (
    "You are a helpful assistant for a public library. Answer the visitor's question in "
    "detail, in about two hundred words of plain prose."
)
QUESTIONS = [
    "How do I renew a book?",
    "What are the opening hours on Sunday?",
    "Can I borrow an e-book from home?",
    "How do I get a library card for my child?",
    "Is there a quiet room for studying?",
    "What happens if I return a book late?",
    "Can I print documents at the library?",
    "Do you have books in other languages?",
]
# Every request's prompt is new: the system prompt is shared, as in real traffic, but no whole
# prompt repeats, which llama-server would answer from its RAM prompt cache (--cache-ram)
# without a prefill, and which a slot cache as large as the number of questions would too.
_VISITORS = itertools.count(1)


# --- llama-server build ---------------------------------------------------------------------
def llama_cpp_source(work: Path) -> Path:
    """The llama.cpp tree vendored in the sdist of the installed llama-cpp-python."""
    ver = version("llama-cpp-python")
    if env := os.environ.get("LLAMA_CPP_SDIST_DIR"):
        return Path(env) / "vendor" / "llama.cpp"
    unpacked = CACHE / "llama-server" / ver / "src"
    tree = unpacked / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if tree.is_dir():
        return tree
    print(f"downloading the llama-cpp-python {ver} sdist ...", flush=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "--dest", str(work), f"llama-cpp-python=={ver}"),
        ],
        check=True,
    )
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    unpacked.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    return tree


def llama_cpp_flags() -> list[str]:
    """The CMake flags the engine's llama.cpp is built with (one place: the wheel script)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "llama-cpp-wheel.sh"), "--flags"],
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(out.stdout)


def llama_server_binary() -> Path:
    if env := os.environ.get("LLAMA_SERVER_BIN"):
        return Path(env)
    cpu_flags = llama_cpp_flags()
    key = hashlib.sha256(" ".join(cpu_flags).encode()).hexdigest()[:16]
    build = CACHE / "llama-server" / f"{version('llama-cpp-python')}-{key}" / "build"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory() as work:
        source = llama_cpp_source(Path(work))
        print(
            f"building llama-server from {source} (several minutes) with {' '.join(cpu_flags)}",
            flush=True,
        )
        flags = [
            *cpu_flags,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_APP=OFF",
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
        ]
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True
        )
    return binary


# --- servers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    model: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def start_genai(args: argparse.Namespace, log: Path, engine_process: bool = True) -> Server:
    port = free_port()
    sized = (
        {}
        if getattr(args, "defaults", False)
        else {
            "N_PARALLEL": str(args.slots),
            "N_CTX": str(args.ctx_per_slot),
            "KV_CACHE_TOKENS": str(args.slots * args.ctx_per_slot),
            "N_BATCH": str(args.batch),
        }
    )
    env = os.environ | {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL": str(args.model),
        "N_THREADS": str(args.threads),
        **sized,
        "MAX_QUEUE": "256",
        "QUEUE_TIMEOUT": "600",
        "API_KEYS": "",
        "LOG_LEVEL": "warning",
        "ENGINE_PROCESS": str(engine_process).lower(),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "genai_service", "serve"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health/ready", process)
    model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
    return Server("genai-service" if engine_process else "in-process", base, process, model)


def start_llama_server(args: argparse.Namespace, binary: Path, log: Path) -> Server:
    port = free_port()
    command = [
        str(binary),
        "--model", str(args.model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--threads", str(args.threads),
        "--threads-batch", str(args.threads),
        "--no-webui",
        "--temp", "0",
    ]  # fmt: skip
    if not args.defaults:  # equal slots, context per slot (one unified buffer, as ours) and batch
        command += [
            "--parallel", str(args.slots),
            "--ctx-size", str(args.slots * args.ctx_per_slot),
            "--kv-unified",
            "--batch-size", str(args.batch),
            "--ubatch-size", str(args.batch),
        ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health", process)
    return Server("llama-server", base, process, "model")


# --- load generator ---------------------------------------------------------------------------
@dataclass
class Sample:
    ttft: float
    gaps: list[float]
    tokens: int
    tail: float = 0.0  # the last text event to the end of the response (final events, [DONE])


@dataclass
class Level:
    concurrency: int
    requests: int
    wall_s: float
    tokens: int
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    tokens_per_s: float
    spread: list[float] = field(default_factory=list)  # tokens/s of each round
    errors: int = 0  # streams that failed (dropped)
    samples: list[dict[str, Any]] = field(default_factory=list)


async def one_request(
    http: httpx.AsyncClient, server: Server, question: str, max_tokens: int
) -> Sample:
    body = {
        "model": server.model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        # Both servers generate exactly max_tokens: equal work, whatever either would reply
        # (two greedy replies differ once a reused prefix rounds differently).
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with http.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError(f"{server.name}: empty completion")
    return Sample(
        ttft=arrivals[0] - start,
        gaps=[b - a for a, b in itertools.pairwise(arrivals)],
        tokens=tokens or len(arrivals),
        tail=time.perf_counter() - arrivals[-1],
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_level(server: Server, concurrency: int, per_stream: int, max_tokens: int) -> Level:
    samples: list[Sample] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def stream(worker: int) -> None:
            for i in range(per_stream):
                question = QUESTIONS[(worker + i * concurrency) % len(QUESTIONS)]
                question = f"Visitor {next(_VISITORS)} asks: {question}"
                try:
                    samples.append(await one_request(http, server, question, max_tokens))
                except (httpx.HTTPError, RuntimeError, json.JSONDecodeError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        start = time.perf_counter()
        await asyncio.gather(*(stream(w) for w in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(s.tokens for s in samples)
    gaps = [g for s in samples for g in s.gaps]
    return Level(
        concurrency=concurrency,
        requests=len(samples),
        wall_s=wall,
        tokens=tokens,
        ttft_p50=pct([s.ttft for s in samples], 0.5),
        ttft_p95=pct([s.ttft for s in samples], 0.95),
        itl_p50=statistics.median(gaps) if gaps else float("nan"),
        tokens_per_s=tokens / wall,
        errors=len(errors),
        samples=[asdict(s) for s in samples],
    )


async def warm(server: Server) -> None:
    async with httpx.AsyncClient(timeout=600) as http:  # caches and threads
        await one_request(http, server, QUESTIONS[0], 8)


def requests_per_stream(args: argparse.Namespace, concurrency: int) -> int:
    """Requests each stream sends at a level: twice `--requests-per-stream` at one stream, so
    the lone stream still gives its TTFT and tok/s medians enough requests."""
    return args.requests_per_stream * (2 if concurrency == 1 else 1)


async def bench_level(server: Server, concurrency: int, args: argparse.Namespace) -> Level:
    per_stream = requests_per_stream(args, concurrency)
    level = await run_level(server, concurrency, per_stream, args.max_tokens)
    print(
        f"  {server.name:14s} c={concurrency:<3d} {level.tokens_per_s:7.1f} tok/s  "
        f"TTFT p50 {level.ttft_p50 * 1000:7.0f} ms  ITL p50 {level.itl_p50 * 1000:6.1f} ms",
        flush=True,
    )
    return level


# --- report -----------------------------------------------------------------------------------
def median_levels(rounds: list[list[Level]]) -> list[Level]:
    """Per concurrency level, the round with the median tokens/s (rounds alternate servers);
    `spread` keeps every round's tokens/s."""
    merged = []
    for levels in zip(*rounds, strict=True):
        ranked = sorted(levels, key=lambda lv: lv.tokens_per_s)
        median = ranked[len(ranked) // 2]
        median.spread = [round(lv.tokens_per_s, 1) for lv in levels]
        merged.append(median)
    return merged


def paired_ratios(
    rounds: dict[str, list[list[Level]]], reference: str, metric: str = "tokens_per_s"
) -> list[list[float]]:
    """Per level, ours / the reference's `metric` in each round: the two ran back to back, so a
    slow spell of the host moves both sides of a ratio (the medians of each side may come from
    different rounds)."""
    ours, ref = rounds["genai-service"], rounds.get(reference)
    if not ref:
        return []
    return [
        [getattr(a[i], metric) / getattr(b[i], metric) for a, b in zip(ours, ref, strict=True)]
        for i in range(len(ours[0]))
    ]


def table(
    results: dict[str, list[Level]],
    reference: str,
    paired: list[list[float]],
    paired_ttft: list[list[float]],
) -> str:
    """The median rounds side by side; the paired columns are the median (and range) of each
    round's ratio, the figures the targets are read from."""
    ours, ref = results["genai-service"], results.get(reference)
    head = (
        "| streams | server | tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms |"
        " tok/s ratio | TTFT p50 ratio | ITL p50 ratio | paired tok/s ratio (range) |"
        " paired TTFT p50 ratio (range) | tok/s per round | dropped |"
    )
    lines = [head, "|" + "---|" * 13]
    for i, level in enumerate(ours):
        rows = [("genai-service", level)] + ([(reference, ref[i])] if ref else [])
        for name, lv in rows:
            ratio = ["", "", "", "", ""]
            if ref and name == "genai-service":
                other = ref[i]
                ratio = [
                    f"{lv.tokens_per_s / other.tokens_per_s:.2f}x",
                    f"{lv.ttft_p50 / other.ttft_p50:.2f}x",
                    f"{lv.itl_p50 / other.itl_p50:.2f}x",
                    *(
                        f"{statistics.median(p):.2f}x ({min(p):.2f}-{max(p):.2f})"
                        for p in (paired[i], paired_ttft[i])
                    ),
                ]
            lines.append(
                f"| {lv.concurrency} | {name} | {lv.tokens_per_s:.1f} | {lv.ttft_p50 * 1000:.0f} |"
                f" {lv.ttft_p95 * 1000:.0f} | {lv.itl_p50 * 1000:.1f} | {' | '.join(ratio)} |"
                f" {' / '.join(f'{x:.0f}' for x in lv.spread)} | {lv.errors} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, list[Level]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, levels in results.items():
        xs = [lv.concurrency for lv in levels]
        ax1.plot(xs, [lv.tokens_per_s for lv in levels], marker="o", label=name)
        ax2.plot(xs, [lv.ttft_p50 * 1000 for lv in levels], marker="o", label=name)
    ax1.set(xlabel="concurrent streams", ylabel="output tokens/s", title="Aggregate throughput")
    ax2.set(xlabel="concurrent streams", ylabel="ms", title="Time to first token (p50)")
    ticks = next(iter(results.values()))
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([lv.concurrency for lv in ticks], [str(lv.concurrency) for lv in ticks])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from genai_service.model_store import embedded_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--slots", type=int, default=None, help="default: max concurrency")
    parser.add_argument("--ctx-per-slot", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512, help="n_batch for both servers")
    parser.add_argument(
        "--reference",
        choices=["llama-server", "in-process"],
        default="llama-server",
        help="compare with llama-server, or with genai-service's engine in the API process "
        "(ENGINE_PROCESS=false: what the engine process costs)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternate the servers N times")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="each server at its own defaults (only the threads set): what users get",
    )
    parser.add_argument("--skip-llama-server", action="store_true", help="no reference run")
    args = parser.parse_args()
    args.model = args.model or embedded_model_path()
    args.slots = args.slots or max(args.concurrency)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with_llama = args.reference == "llama-server" and not args.skip_llama_server
    binary = llama_server_binary() if with_llama else None
    print(
        f"model {args.model.name}, threads {args.threads}, slots {args.slots}, ctx/slot "
        f"{args.ctx_per_slot}, max_tokens {args.max_tokens}, streams {args.concurrency}",
        flush=True,
    )
    starters: list[tuple[str, Any]] = [("genai-service", lambda log: start_genai(args, log))]
    if binary is not None:
        starters.append(("llama-server", lambda log: start_llama_server(args, binary, log)))
    elif args.reference == "in-process":
        starters.append(("in-process", lambda log: start_genai(args, log, engine_process=False)))
    # Every server starts once and stays up (an idle one costs next to nothing); each level
    # runs on each server back to back, in the other order the next round, so each round gives
    # one paired ratio per level.
    rounds: dict[str, list[list[Level]]] = {name: [] for name, _ in starters}
    servers: list[Server] = []
    try:
        for name, start in starters:
            servers.append(start(RESULTS / f"throughput-{stamp}-{name}.log"))
            asyncio.run(warm(servers[-1]))
        for n in range(args.rounds):
            if args.rounds > 1:
                print(f"round {n + 1}/{args.rounds}", flush=True)
            order = servers if n % 2 == 0 else servers[::-1]
            for server in order:
                rounds[server.name].append([])
            for c in args.concurrency:
                for server in order:
                    rounds[server.name][-1].append(asyncio.run(bench_level(server, c, args)))
    finally:
        for server in servers:
            server.stop()
    results = {name: median_levels(runs) for name, runs in rounds.items()}
    paired = paired_ratios(rounds, args.reference)
    paired_ttft = paired_ratios(rounds, args.reference, "ttft_p50")

    report = table(results, args.reference, paired, paired_ttft)
    print("\n" + report)
    out = RESULTS / f"throughput-{stamp}.json"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "settings": settings,
        "llama_cpp_python": version("llama-cpp-python"),
        "cpu_count": os.cpu_count(),
        "results": {k: [asdict(lv) for lv in v] for k, v in results.items()},
        "paired_tokens_per_s_ratios": paired,
        "paired_ttft_p50_ratios": paired_ttft,
        "table": report,
    }
    out.write_text(json.dumps(payload, indent=2))
    png = out.with_suffix(".png")
    plot(results, png)
    shutil.copyfile(out, RESULTS / "throughput-latest.json")
    shutil.copyfile(png, RESULTS / "throughput-latest.png")
    print(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
