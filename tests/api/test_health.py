"""Liveness is up at once; readiness only after the model loaded and made a warm-up token."""

from __future__ import annotations

import threading
import time

import pytest

from genai_service.engines import create_engine
from genai_service.engines.base import Engine
from genai_service.settings import Settings
from tests.conftest import MODEL_ID, RunningServer, run_server


def test_ready_when_loaded(server: RunningServer) -> None:
    with server.http() as http:
        live, ready = http.get("/health/live"), http.get("/health/ready")
    assert live.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["models"][MODEL_ID]["engine"] == "llama.cpp"


def test_readiness_before_and_after_load() -> None:
    release = threading.Event()

    def gated_factory(settings: Settings) -> Engine:
        # The real engine, held back until the test has looked at the not-yet-ready service.
        release.wait(30)
        return create_engine(settings)

    with run_server(engine_factory=gated_factory, wait=False) as starting:
        with starting.http() as http:
            assert http.get("/health/live").status_code == 200
            not_ready = http.get("/health/ready")
            assert not_ready.status_code == 503
            assert not_ready.headers["retry-after"]
            assert "loading model" in not_ready.json()["reason"]
            refused = http.post(
                "/v1/chat/completions",
                json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "not_ready"
            assert refused.headers["retry-after"]

            release.set()
            starting.wait_ready()
            assert http.get("/health/ready").status_code == 200
            ok = http.post("/generate/text", json={"prompt": "hi", "max_tokens": 2})
            assert ok.status_code == 200


def test_failed_load_reports_reason() -> None:
    with run_server(model="/nonexistent/model.gguf", wait=False) as broken:
        deadline = time.monotonic() + 10
        while "failed" not in broken.state.reason and time.monotonic() < deadline:
            time.sleep(0.05)
        with broken.http() as http:
            response = http.get("/health/ready")
            assert response.status_code == 503
            assert "failed" in response.json()["reason"]
            assert http.get("/health/live").status_code == 200


@pytest.mark.parametrize(
    ("env", "show", "visible"),
    [("DEV", False, True), ("PROD", False, False), ("PROD", True, True)],
)
def test_docs_hidden_in_production_unless_asked(env: str, show: bool, visible: bool) -> None:
    with run_server(build_env=env, show_docs_in_production=show) as running:
        with running.http() as http:
            for path in ("/docs", "/openapi.json"):
                assert (http.get(path).status_code == 200) is visible
