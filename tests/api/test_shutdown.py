"""SIGTERM (a rolling update, a scale-down) lets running streams finish, then exits 0.

Streams get SHUTDOWN_DRAIN_SECONDS to end with their [DONE].

A real `genai-service serve` process with uvicorn's own signal handling, the real model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

STREAMS = 4


def test_sigterm_drains_streams_and_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "N_THREADS": "1",
        "N_CTX": "512",
        "N_PARALLEL": str(STREAMS),
        "DATA_DIR": str(tmp_path),
        "EMBEDDING_MODEL": "",
        "LOG_LEVEL": "warning",
        "SHUTDOWN_DRAIN_SECONDS": "30",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "genai_service", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as under systemd or `docker stop`
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)

        endings: list[list[str]] = [[] for _ in range(STREAMS)]
        started = [threading.Event() for _ in range(STREAMS)]

        def stream(i: int) -> None:
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 60,
                "temperature": 0.8,
                "stream": True,
            }
            with (
                httpx.Client(timeout=60) as http,
                http.stream("POST", f"{base}/v1/chat/completions", json=body) as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        endings[i].append(line[6:])
                        started[i].set()
            started[i].set()

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(60)
        # To the whole group, the engine process too (systemd's and Docker's default).
        os.killpg(server.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        for events in endings:
            assert events[-1] == "[DONE]", events[-3:]
            finish = json.loads(events[-2])["choices"][0]["finish_reason"]
            assert finish in ("stop", "length")
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
