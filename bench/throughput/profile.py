"""Where a generated token's time goes: CPU time per token of the API and engine processes.

Starts genai-service (the llama.cpp engine in its own process) and streams greedy chats at each
concurrency level, as `bench.py` does. Around every level it reads, from /proc, the CPU time
(user + system) of the API process and of the engine process, and from /metrics the engine's own
step counters (time in `llama_decode` against the whole step). CPU time is what a shared machine
does not distort much: wall-clock numbers move with the neighbours' load, CPU time per token
mostly does not. Optionally `--py-spy DIR` samples both processes with py-spy in a second pass
(py-spy's own cost would skew the first) and writes flame graphs and the top functions.

    .venv/bin/python bench/throughput/profile.py --concurrency 1 8 --max-tokens 128

`--reference` then runs `llama-server` (the same build, GGUF, threads, slots and batch) through
the same levels and reads its process's CPU per token the same way: its decode, sampling and
HTTP work in C++. Our CPU per token minus its CPU per token is what the Python path costs over
C++ for the same tokens, whatever the machine's syscall and cache costs (both pay those).

Python overhead per token = the API process's CPU + the scheduler thread's CPU outside
`llama_decode` (`genai_engine_host_cpu_seconds_total`: batching, sampling, text) + the engine's
direct-stream sender thread (framing and socket writes, read from /proc by its thread name),
per generated token. Both are CPU time: a moment the scheduler waits for a core that the decode
threads hold is not overhead (the "step wall outside decode" column still shows it). That sum
includes kernel time and the work any server does per token (sampling, text, JSON, socket
writes); `hostwork.py` compares it with what `llama-server`'s C++ spends on the same.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import bench

CLK_TCK = os.sysconf("SC_CLK_TCK")
COUNTERS = (
    "genai_engine_steps_total",
    "genai_engine_step_seconds_total",
    "genai_engine_decode_seconds_total",
    "genai_engine_step_tokens_total",
    "genai_engine_host_cpu_seconds_total",
)


def cpu_seconds(pid: int, user_only: bool = False) -> float:
    """utime + stime (or utime only) of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + (0 if user_only else int(fields[12]))) / CLK_TCK


def thread_cpu(pid: int, name: str | None = None) -> dict[int, float]:
    """utime + stime of each thread of a process, in seconds; only the threads with this OS
    name if one is given (`threads.name_os_thread`)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if name is not None and (task / "comm").read_text().strip() != name:
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def engine_pid(api_pid: int) -> int:
    # Started from a worker thread: each thread of the API process has its own children list.
    children = [
        c
        for task in Path(f"/proc/{api_pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"genai_service.engines.llama_cpp" in cmdline:
            return int(child)
    raise RuntimeError("no engine process found")


def counters(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics").text
    out = dict.fromkeys(COUNTERS, 0.0)
    for name in COUNTERS:
        for match in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M):
            out[name] += float(match.group(1))
    return out


def measure(server: bench.Server, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    api, eng = server.process.pid, engine_pid(server.process.pid)

    def snapshot() -> tuple[Any, ...]:
        return (
            cpu_seconds(api),
            cpu_seconds(eng),
            counters(server.base_url),
            time.perf_counter(),
            cpu_seconds(api, user_only=True),
            sum(thread_cpu(eng, "direct-sender").values()),
        )

    before = snapshot()
    per_stream = bench.requests_per_stream(args, concurrency)
    level = asyncio.run(bench.run_level(server, concurrency, per_stream, args.max_tokens))
    after = snapshot()
    tokens = level.tokens
    delta = {k: after[2][k] - before[2][k] for k in COUNTERS}
    steps = delta["genai_engine_steps_total"] or 1
    us = 1e6 / tokens
    api_cpu = after[0] - before[0]
    api_user = after[4] - before[4]
    engine_cpu = after[1] - before[1]
    decode_wall = delta["genai_engine_decode_seconds_total"]
    step_wall = delta["genai_engine_step_seconds_total"]
    row = {
        "concurrency": concurrency,
        "tokens": tokens,
        "tok_s": level.tokens_per_s,
        "wall_us_per_token": (after[3] - before[3]) * us,
        "api_cpu_us_per_token": api_cpu * us,
        "api_user_us_per_token": api_user * us,
        "engine_cpu_us_per_token": engine_cpu * us,
        "decode_wall_us_per_token": decode_wall * us,
        "step_python_us_per_token": (step_wall - decode_wall) * us,
        "engine_host_cpu_us_per_token": delta["genai_engine_host_cpu_seconds_total"] * us,
        "sender_cpu_us_per_token": (after[5] - before[5]) * us,
        "api_cpu_ms_per_request": api_cpu * 1000 / (concurrency * per_stream),
        "engine_loop_wall_us_per_token": step_wall * us,
        "tokens_per_step": delta["genai_engine_step_tokens_total"] / steps,
        "decode_ms_per_step": decode_wall / steps * 1000,
        "ttft_p50_ms": level.ttft_p50 * 1000,
    }
    # Python around each token: the API process's CPU, the scheduler thread's CPU outside
    # llama_decode (CPU, not wall: a wait for a core the decode threads hold is not overhead),
    # and the sender thread's (its socket writes were the scheduler's before it existed).
    row["python_us_per_token"] = (
        row["api_cpu_us_per_token"]
        + row["engine_host_cpu_us_per_token"]
        + row["sender_cpu_us_per_token"]
    )
    return row


def measure_reference(
    server: bench.Server, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """llama-server's CPU per token at one level: the whole process, its main thread (the
    decode loop: batch, `llama_decode`, sampling; with one thread the whole graph too) and the
    rest (HTTP threads, and ggml's workers when threads > 1)."""
    pid = server.process.pid
    before, started = thread_cpu(pid), time.perf_counter()
    per_stream = bench.requests_per_stream(args, concurrency)
    level = asyncio.run(bench.run_level(server, concurrency, per_stream, args.max_tokens))
    after, ended = thread_cpu(pid), time.perf_counter()
    us = 1e6 / level.tokens
    delta = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    return {
        "concurrency": concurrency,
        "tokens": level.tokens,
        "tok_s": level.tokens_per_s,
        "wall_us_per_token": (ended - started) * us,
        "cpu_us_per_token": sum(delta.values()) * us,
        "main_thread_us_per_token": delta.get(pid, 0.0) * us,
        "other_threads_us_per_token": (sum(delta.values()) - delta.get(pid, 0.0)) * us,
        "ttft_p50_ms": level.ttft_p50 * 1000,
    }


def reference_table(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    head = (
        "| streams | ours tok/s | llama-server tok/s | ours CPU µs/tok (API + engine) | "
        "llama-server CPU µs/tok (main thread + others) | ours - llama-server µs/tok |"
    )
    lines = [head, "|" + "---|" * 6]
    for o, t in zip(ours, theirs, strict=True):
        total = o["api_cpu_us_per_token"] + o["engine_cpu_us_per_token"]
        lines.append(
            f"| {o['concurrency']} | {o['tok_s']:.1f} | {t['tok_s']:.1f} |"
            f" {total:.0f} ({o['api_cpu_us_per_token']:.0f} + {o['engine_cpu_us_per_token']:.0f})"
            f" | {t['cpu_us_per_token']:.0f} ({t['main_thread_us_per_token']:.0f} +"
            f" {t['other_threads_us_per_token']:.0f}) | {total - t['cpu_us_per_token']:+.0f} |"
        )
    return "\n".join(lines)


def py_spy(server: bench.Server, concurrency: int, args: argparse.Namespace, out: Path) -> None:
    """Sample both processes during one more run of the level; flame graphs + top functions."""
    api, eng = server.process.pid, engine_pid(server.process.pid)
    out.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in (("api", api), ("engine", eng)):
        raw = out / f"{name}-c{concurrency}.txt"
        recorders.append(
            (
                name,
                raw,
                subprocess.Popen(
                    [
                        *(str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)),
                        *("--rate", "250", "--format", "raw", "--output", str(raw)),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    time.sleep(1)
    per_stream = bench.requests_per_stream(args, concurrency)
    asyncio.run(bench.run_level(server, concurrency, per_stream, args.max_tokens))
    for _, _, proc in recorders:
        proc.send_signal(2)
        proc.wait(30)
    for name, raw, _ in recorders:
        print(f"\n--- py-spy {name} c={concurrency}: top self (leaf) and inclusive frames ---")
        print(top_functions(raw))


def top_functions(raw: Path, n: int = 18) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if not raw.exists():
        return "(no samples)"
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        leaf[_short(frames[-1])] += k
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += k
    lines = [f"{total} samples"]
    lines += [f"  self {c / total:6.1%}  {f}" for f, c in leaf.most_common(n)]
    lines += [f"  incl {c / total:6.1%}  {f}" for f, c in inclusive.most_common(n)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"
    return re.sub(r"\(([^()]*/)?([^/()]+)\)$", r"(\2)", frame.strip())


def main() -> None:
    from genai_service.model_store import embedded_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--ctx-per-slot", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--py-spy", type=Path, default=None, help="also sample with py-spy")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run llama-server through the same levels and compare CPU per token",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate the servers N times")
    args = parser.parse_args()
    args.defaults = False  # bench.start_* read it: equal slots, context and batch
    args.model = args.model or embedded_model_path()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"genai-profile-{os.getpid()}.log"
    rounds: list[list[dict[str, Any]]] = []
    reference_rounds: list[list[dict[str, Any]]] = []
    binary = bench.llama_server_binary() if args.reference else None
    for n in range(args.rounds):
        if args.rounds > 1:
            print(f"round {n + 1}/{args.rounds}", flush=True)
        rounds.append(profile_genai(args, log, spy=args.py_spy if n == 0 else None))
        if binary is not None:  # alternated: both servers see the machine in the same state
            reference_rounds.append(profile_reference(args, binary, log))
    rows = median_rows(rounds, lambda r: r["api_cpu_us_per_token"] + r["engine_cpu_us_per_token"])
    reference = median_rows(reference_rounds, lambda r: r["cpu_us_per_token"])
    print("\n" + table(rows))
    if reference:
        print("\n" + reference_table(rows, reference))
    if args.json:
        args.json.write_text(
            json.dumps({"genai-service": rounds, "llama-server": reference_rounds}, indent=2)
        )


def profile_genai(args: argparse.Namespace, log: Path, spy: Path | None) -> list[dict[str, Any]]:
    server = bench.start_genai(args, log)
    rows = []
    try:
        asyncio.run(_warm(server))
        api, eng = server.process.pid, engine_pid(server.process.pid)
        before = cpu_seconds(api), cpu_seconds(eng)
        time.sleep(5)
        idle = {
            "api_idle_cpu_pct": (cpu_seconds(api) - before[0]) / 5 * 100,
            "engine_idle_cpu_pct": (cpu_seconds(eng) - before[1]) / 5 * 100,
        }
        print(json.dumps(idle), flush=True)
        for c in args.concurrency:
            rows.append(measure(server, c, args))
            print(json.dumps(rows[-1]), flush=True)
        if spy:
            for c in args.concurrency:
                py_spy(server, c, args, spy)
    finally:
        server.stop()
    return rows


def profile_reference(args: argparse.Namespace, binary: Path, log: Path) -> list[dict[str, Any]]:
    server = bench.start_llama_server(args, binary, log)
    rows = []
    try:
        asyncio.run(_warm(server))
        for c in args.concurrency:
            rows.append(measure_reference(server, c, args))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def median_rows(
    rounds: list[list[dict[str, Any]]], key: Callable[[dict[str, Any]], float]
) -> list[dict[str, Any]]:
    """Per level, the round whose CPU per token is the median (an odd count picks a real one)."""
    if not rounds:
        return []
    return [sorted(level, key=key)[len(level) // 2] for level in zip(*rounds, strict=True)]


async def _warm(server: bench.Server) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        await bench.one_request(http, server, bench.QUESTIONS[0], 8)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| streams | tok/s | wall µs/tok | API CPU µs/tok (ms/request) | engine CPU µs/tok |"
        " llama_decode wall µs/tok | step wall outside decode µs/tok | scheduler CPU outside"
        " decode µs/tok | sender CPU µs/tok | Python µs/tok (API + scheduler + sender) |"
        " tokens/step |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['tok_s']:.1f} | {r['wall_us_per_token']:.0f} |"
            f" {r['api_cpu_us_per_token']:.0f} ({r['api_cpu_ms_per_request']:.1f}) |"
            f" {r['engine_cpu_us_per_token']:.0f} | {r['decode_wall_us_per_token']:.0f} |"
            f" {r['step_python_us_per_token']:.0f} | {r['engine_host_cpu_us_per_token']:.0f} |"
            f" {r['sender_cpu_us_per_token']:.0f} | {r['python_us_per_token']:.0f} |"
            f" {r['tokens_per_step']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
