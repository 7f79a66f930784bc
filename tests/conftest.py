"""Shared fixtures: real servers on loopback running the real embedded SmolLM2 model.

Servers run uvicorn in a thread of the test process, so tests reach them over real HTTP (the
official `openai` SDK works unchanged) and can still look at the service state directly.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from genai_service.app import EngineFactory, create_app
from genai_service.settings import Settings
from genai_service.state import ServiceState

MODEL_ID = "SmolLM2-135M-Instruct"

# Postgres fixtures (throwaway initdb cluster or TEST_DATABASE_URL) for the storage tests.
pytest_plugins = ["tests.postgres"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    app: FastAPI
    base_url: str

    @property
    def state(self) -> ServiceState:
        return self.app.state.service  # type: ignore[no-any-return]

    def openai(self, api_key: str = "not-needed", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, **kwargs
        )

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.ready:
                return
            if "failed" in self.state.reason:
                raise RuntimeError(self.state.reason)
            time.sleep(0.02)
        raise TimeoutError(f"not ready: {self.state.reason}")


@contextmanager
def run_server(
    settings: Settings | None = None,
    engine_factory: EngineFactory | None = None,
    wait: bool = True,
    **overrides: Any,
) -> Iterator[RunningServer]:
    settings = settings or make_settings(**overrides)
    app = create_app(settings, engine_factory)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    running = RunningServer(app, f"http://127.0.0.1:{port}")
    try:
        if wait:
            running.wait_ready()
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"n_ctx": 2048, "max_queue": 4, "log_level": "warning"}
    # Each server gets its own embedded SQLite database, never the user's data directory.
    values["data_dir"] = tempfile.mkdtemp(prefix="genai-test-data-")
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """The default service: embedded SmolLM2, auth off, one generation slot."""
    with run_server() as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    return server.openai()


@pytest.fixture
def server_factory() -> Callable[..., Any]:
    return run_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # In CI (GENAI_STRICT=1) a skip means something the suite needs is missing: fail instead.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("GENAI_STRICT") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under GENAI_STRICT=1: {report.longrepr}"
