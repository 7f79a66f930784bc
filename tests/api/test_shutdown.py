"""SIGTERM (a rolling update, a scale-down): readiness 503 at once, new requests 503 with
Retry-After, running streams finish with [DONE], the usage ledger is flushed, exit 0.

A real `genai-service serve` process with its own signal handling, the real model, its
SQLite ledger read after the exit. The cut at the timeout (an SSE error event instead of
[DONE]) is tested on the fake engine in tests/serving/test_shutdown.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_ready

STREAMS = 4


@contextlib.contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real `genai-service serve` in its own process group, as under systemd or Docker."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "genai_service", "serve"],
        env=os.environ
        | {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "N_THREADS": "1",
            "N_CTX": "512",
            "DATA_DIR": str(tmp_path),
            "EMBEDDING_MODEL": "",
            "LOG_LEVEL": "warning",
        }
        | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as under systemd or `docker stop`
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server, 120)
        yield server, base
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def stream_chat(
    base: str,
    content: str,
    max_tokens: int,
    seed: int,
    events: list[str],
    started: threading.Event,
    after: int = 1,
) -> None:
    """Stream one chat into `events` (its `data:` payloads); `started` is set once `after` have
    come, and at the end."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
    }
    with (
        httpx.Client(timeout=120) as http,
        http.stream("POST", f"{base}/v1/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) >= after:
                    started.set()
    started.set()


def test_sigterm_drains_streams_and_exits_zero(tmp_path: Path) -> None:
    with serve(
        tmp_path,
        N_PARALLEL=str(STREAMS),
        SHUTDOWN_TIMEOUT="60",  # the alias of SHUTDOWN_DRAIN_SECONDS
    ) as (server, base):
        endings: list[list[str]] = [[] for _ in range(STREAMS)]
        started = [threading.Event() for _ in range(STREAMS)]

        threads = [
            threading.Thread(
                target=stream_chat,
                args=(base, "Tell me a long story about a ship.", 160, i, endings[i], started[i]),
            )
            for i in range(STREAMS)
        ]
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(60)
        # To the whole group, the engine process too (systemd's and Docker's default).
        os.killpg(server.pid, signal.SIGTERM)
        signalled = time.monotonic()

        # Readiness turns 503 within 1 s (polled), so the load balancer stops sending here.
        with httpx.Client(timeout=5) as http:
            while True:
                ready = http.get(f"{base}/health/ready")
                if ready.status_code == 503:
                    break
                assert time.monotonic() - signalled < 1.0, "readiness still 200 after 1 s"
            assert ready.json()["reason"] == "shutting down"
            assert ready.headers["Retry-After"]
            # A new request is refused with 503 and Retry-After, in the OpenAI error format.
            refused = http.post(
                f"{base}/v1/chat/completions",
                json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]},
            )
        still_running = sum(thread.is_alive() for thread in threads)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "server_shutting_down"

        for thread in threads:
            thread.join(120)
        for events in endings:
            assert events[-1] == "[DONE]", events[-3:]
            finish = json.loads(events[-2])["choices"][0]["finish_reason"]
            assert finish in ("stop", "length")
        assert server.wait(60) == 0, server.stdout.read().decode()[-3000:] if server.stdout else ""
        # The streams were still generating while the new request was refused.
        assert still_running >= 1
        # The ledger was flushed before the exit: one record per stream, none for the refused.
        with sqlite3.connect(tmp_path / "genai.db") as db:
            rows = db.execute("SELECT endpoint, status FROM completion_records").fetchall()
        assert sorted(rows) == [("/v1/chat/completions", "ok")] * STREAMS, rows


def test_drain_timeout_ends_a_stream_the_engine_writes_with_an_error_event(tmp_path: Path) -> None:
    """A direct stream (its tokens written by the engine process, DIRECT_STREAM) is stopped at
    the drain's timeout through the engine, and still ends with the error event, intact."""
    with serve(tmp_path, SHUTDOWN_DRAIN_SECONDS="1") as (server, base):
        events: list[str] = []
        started = threading.Event()

        thread = threading.Thread(
            target=stream_chat,
            args=(base, "Tell me a very long story.", 450, 1, events, started, 4),
        )
        thread.start()
        assert started.wait(60)
        os.killpg(server.pid, signal.SIGTERM)
        thread.join(60)
        assert server.wait(60) == 0, server.stdout.read().decode()[-3000:] if server.stdout else ""
        assert json.loads(events[-1])["error"]["code"] == "server_shutting_down", events[-3:]
        pieces = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[1:-1]]
        assert len(pieces) > 3 and all(isinstance(p, str) for p in pieces)
        assert len(pieces) < 449  # cut, not finished (1 thread: seconds of tokens left)
