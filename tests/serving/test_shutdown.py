"""The drain's timeout on a fake engine (fast tier): what is still running when
SHUTDOWN_TIMEOUT passes ends cleanly, a stream with an SSE error event and a plain request
with a 503, both recorded in the ledger, and the server stops. The drain that completes
(every stream ends with [DONE]) runs on the real model in tests/api/test_shutdown.py."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from typing import Any

import httpx
import uvicorn

from genai_service.app import create_app
from genai_service.server import DrainingServer
from tests.conftest import free_port, make_settings
from tests.fakes import FakeEngine


def test_drain_timeout_ends_the_rest_with_an_error_event() -> None:
    settings = make_settings(shutdown_drain_seconds=0.5, n_parallel=2)
    app = create_app(settings, lambda s: FakeEngine(context_length=4096, delay=0.01))
    shutdown = app.state.service.generations.shutdown
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = DrainingServer(config, shutdown)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not (server.started and app.state.service.ready):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)

    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3000,  # 30 s at 10 ms a token: far past the timeout
    }
    events: list[str] = []
    plain: list[httpx.Response] = []

    def stream() -> None:
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{base}/v1/chat/completions", json=body | {"stream": True}) as r,
        ):
            events.extend(line[6:] for line in r.iter_lines() if line.startswith("data: "))

    def complete() -> None:
        with httpx.Client(timeout=30) as http:
            plain.append(http.post(f"{base}/v1/chat/completions", json=body))

    clients = [threading.Thread(target=stream), threading.Thread(target=complete)]
    for client in clients:
        client.start()
    while shutdown.inflight < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    server.handle_exit(signal.SIGTERM, None)  # as the signal would, from another thread here
    with httpx.Client(timeout=5) as http:
        while http.get(f"{base}/health/ready").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = http.post(f"{base}/v1/chat/completions", json=body)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "server_shutting_down"

    for client in clients:
        client.join(30)
    # The stream's closing event is an OpenAI error (no [DONE]); the plain request a 503.
    assert events and events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["code"] == "server_shutting_down"
    assert len(events) > 1  # it had streamed tokens before the cut
    (response,) = plain
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_shutting_down"

    thread.join(30)
    assert not thread.is_alive(), "the server stops once the drain is over"
    with sqlite3.connect(settings.data_dir / "genai.db") as db:
        statuses = db.execute("SELECT status FROM completion_records").fetchall()
    assert sorted(statuses) == [("error",), ("error",)]


def test_second_signal_ends_the_running_generations_at_once() -> None:
    settings = make_settings(shutdown_drain_seconds=600)  # the drain alone would wait 10 min
    app = create_app(settings, lambda s: FakeEngine(context_length=4096, delay=0.01))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = DrainingServer(config, app.state.service.generations.shutdown)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and app.state.service.ready):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    events: list[str] = []
    first = threading.Event()

    def stream() -> None:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", url, json=body | {"max_tokens": 3000}) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()

    client = threading.Thread(target=stream)
    client.start()
    assert first.wait(10)
    server.handle_exit(signal.SIGTERM, None)  # the drain starts
    server.handle_exit(signal.SIGTERM, None)  # the operator insists
    client.join(30)
    thread.join(30)
    assert not thread.is_alive()
    assert json.loads(events[-1])["error"]["code"] == "server_shutting_down"
