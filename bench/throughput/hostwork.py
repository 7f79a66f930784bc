"""The CPU each server spends per token outside llama.cpp's decode, from `perf` samples.

`profile.py` reads CPU time per thread; it cannot split llama-server's main thread (its decode
loop) into the decode and the rest, and our scheduler thread's own counter times itself. Here
`perf record -e cpu-clock` samples both servers' processes while the same greedy streams run
(same GGUF, build, threads and slots as `bench.py`), and every sample is put in one bucket by
the shared object and symbol it landed in:

- decode: ggml, llama.cpp's context, graph and KV cache code, libgomp and libm (llama-server
  links them statically, so there the symbol decides), and libc's memmove and memset: ggml's
  copies (KV cache writes, the logits), about 100 µs per token on both servers' decoding thread;
- host: everything else in user mode. For genai-service the Python interpreter, its extension
  modules (numpy, ctypes, pydantic, uvloop...) and libc; for llama-server its server code,
  sampling, tokenizer, JSON and libc;
- kernel: system calls, scheduling, faults (socket writes, futexes, OpenMP's barrier waits).

Python overhead over C++ per token = our host µs per token - llama-server's host µs per token
for the same tokens: what the Python path costs beyond what a C++ server spends on the same
per-token work (sampling, detokenising, stop checks, JSON, HTTP) on this machine, whose caches
are cold after every decode for both.

    .venv/bin/python bench/throughput/hostwork.py --threads 2 --concurrency 1 8 --rounds 3

Needs `perf` (Debian `linux-perf`) and the right to sample the servers (root, or
`kernel.perf_event_paranoid` <= 1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from genai_service.engines.threads import default_threads
from genai_service.model_store import embedded_model_path

sys.path.insert(0, str(Path(__file__).parent))
import profile

import bench

FREQUENCY = 1999  # samples per second of CPU time; odd, so it does not beat with timers
DECODE_LIBRARIES = ("libggml", "libllama", "libgomp", "libm.so", "libm-")
DECODE_COPIES = re.compile(r"^__(memmove|memcpy|memset)_")
# llama-server links llama.cpp in: its decode is known by symbol. Tokenizer and sampler symbols
# start with llama_ too, so they are matched first as host work.
HOST_SYMBOLS = re.compile(
    r"^(llama_vocab|llama_token_to_piece|llama_tokenize|llama_detokenize|llama_sampler"
    r"|llama_token_data|llama_get_sampled|common_|server_|std::)"
)
DECODE_SYMBOLS = re.compile(
    r"^(ggml|llama_|llm_|set_input|quantize_|dequantize_|build_|GOMP|gomp_|__expf|__log|__exp"
    r"|\(anonymous namespace\)::tinyBLAS|llamafile_sgemm)"  # the batched matmuls (sgemm.cpp)
)


def bucket(dso: str, symbol: str) -> str:
    if dso.startswith("[kernel") or symbol.startswith("[k]"):
        return "kernel"
    if any(dso.startswith(lib) for lib in DECODE_LIBRARIES):
        return "decode"
    name = symbol.removeprefix("[.] ").strip()
    if dso.startswith("libc.") and DECODE_COPIES.match(name):
        return "decode"
    if (
        dso.startswith("llama-server")
        and not HOST_SYMBOLS.match(name)
        and DECODE_SYMBOLS.match(name)
    ):
        return "decode"
    return "host"


def perf_samples(data: Path, pids: list[int]) -> list[tuple[int, str, str, str]]:
    """(samples, "tid:comm", dso, symbol) rows of these processes in a perf.data file."""
    options = ["--stdio", "--no-children", "--sort", "pid,dso,sym", "-F", "sample,pid,dso,sym"]
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "-t",
            "\t",
            "--pid",
            ",".join(map(str, pids)),
            *options,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in report.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) >= 4 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1], parts[2], parts[3]))
    return rows


def split(rows: list[tuple[int, str, str, str]], tokens: int) -> dict[str, Any]:
    """µs per token by bucket, in all and on the thread that calls llama_decode."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for samples, thread, dso, symbol in rows:
        per_thread[thread][bucket(dso, symbol)] += samples
    # The thread that calls llama_decode: ggml's workers only decode (and wait); it also does
    # the host work between two decodes, so it has the most of both.
    decoder = max(per_thread, key=lambda t: min(per_thread[t]["decode"], per_thread[t]["host"]))
    us = 1e6 / FREQUENCY / tokens
    total: collections.Counter[str] = collections.Counter()
    for counts in per_thread.values():
        total.update(counts)
    return {
        "tokens": tokens,
        "decoder_thread": decoder,
        "all": {k: total[k] * us for k in ("decode", "host", "kernel")},
        "decoder": {k: per_thread[decoder][k] * us for k in ("decode", "host", "kernel")},
        "threads": {t: {k: v * us for k, v in c.items()} for t, c in per_thread.items()},
    }


def sample_level(
    server: bench.Server, pids: list[int], args: argparse.Namespace, concurrency: int, work: Path
) -> dict[str, Any]:
    data = work / f"{server.name}-{concurrency}.data"
    # System-wide: `perf record -p` slowed our 8-stream level to a sixth (it follows each
    # thread on its own); sampling every CPU costs both servers the same few per cent.
    recorder = subprocess.Popen(
        ["perf", "record", "-a", "-F", str(FREQUENCY), "-e", "cpu-clock", "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # perf is sampling before the first request
    per_stream = bench.requests_per_stream(args, concurrency)
    level = asyncio.run(bench.run_level(server, concurrency, per_stream, args.max_tokens))
    recorder.send_signal(signal.SIGINT)
    recorder.wait()
    result = split(perf_samples(data, pids), level.tokens)
    result["tok_s"] = level.tokens_per_s
    result["errors"] = level.errors
    data.unlink()
    return result


def median_of(rounds: list[dict[str, Any]], part: str, key: str) -> float:
    return statistics.median(r[part][key] for r in rounds)


def table(results: dict[str, dict[int, list[dict[str, Any]]]], levels: list[int]) -> str:
    ours, ref = results["genai-service"], results["llama-server"]
    head = (
        "| streams | server | tok/s | host µs/tok (decode thread) | kernel µs/tok (decode thread)"
        " | decode µs/tok | Python over C++: host µs/tok, ours - llama-server, paired (range) |"
    )
    lines = [head, "|" + "---|" * 7]
    for c in levels:
        for name, rounds in (("genai-service", ours[c]), ("llama-server", ref[c])):
            host = median_of(rounds, "all", "host")
            over = ""
            if name == "genai-service":
                diffs = [
                    o["all"]["host"] - r["all"]["host"]
                    for o, r in zip(ours[c], ref[c], strict=True)
                ]
                over = f"{statistics.median(diffs):+.0f} ({min(diffs):+.0f} to {max(diffs):+.0f})"
            lines.append(
                f"| {c} | {name} | {statistics.median(r['tok_s'] for r in rounds):.1f} |"
                f" {host:.0f} ({median_of(rounds, 'decoder', 'host'):.0f}) |"
                f" {median_of(rounds, 'all', 'kernel'):.0f}"
                f" ({median_of(rounds, 'decoder', 'kernel'):.0f}) |"
                f" {median_of(rounds, 'all', 'decode'):.0f} | {over} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--ctx-per-slot", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the servers N times")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON (default: bench/results/hostwork-<time>)"
    )
    args = parser.parse_args()
    args.defaults = False
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: apt-get install linux-perf)")
    args.model = args.model or embedded_model_path()
    binary = bench.llama_server_binary()
    logs = Path(tempfile.mkdtemp(prefix="hostwork-"))
    servers: list[bench.Server] = []
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: collections.defaultdict(list) for name in ("genai-service", "llama-server")
    }
    try:
        servers.append(bench.start_genai(args, logs / "genai.log"))
        servers.append(bench.start_llama_server(args, binary, logs / "llama-server.log"))
        pids = {
            servers[0].name: [servers[0].process.pid, profile.engine_pid(servers[0].process.pid)],
            servers[1].name: [servers[1].process.pid],
        }
        for server in servers:
            asyncio.run(bench.warm(server))
        for n in range(args.rounds):
            for c in args.concurrency:
                for server in servers if n % 2 == 0 else servers[::-1]:
                    result = sample_level(server, pids[server.name], args, c, logs)
                    results[server.name][c].append(result)
                    print(
                        f"  round {n + 1} {server.name:14s} c={c:<3d} {result['tok_s']:6.1f} tok/s"
                        f"  host {result['all']['host']:5.0f} µs/tok"
                        f" (decode thread {result['decoder']['host']:4.0f})"
                        f"  kernel {result['all']['kernel']:5.0f}",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
    report = table(results, args.concurrency)
    print("\n" + report)
    out = args.output or bench.RESULTS / f"hostwork-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(
        json.dumps({"settings": settings, "results": results, "table": report}, indent=1)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
