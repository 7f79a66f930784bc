"""Liveness is up at once; readiness only after the model loaded and made a warm-up token."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from genai_service.engines import create_engine
from genai_service.engines.base import Engine
from genai_service.settings import Settings
from tests.conftest import MODEL_ID, RunningServer, run_server
from tests.fakes import FakeEngine


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


def test_failed_load_says_it_is_permanent_and_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with capture_logs() as logs, run_server(model="/nonexistent/model.gguf", wait=False) as broken:
        deadline = time.monotonic() + 10
        while not broken.state.failed and time.monotonic() < deadline:
            time.sleep(0.05)
        with broken.http() as http:
            response = http.get("/health/ready")
            assert response.status_code == 503
            assert "retry-after" not in response.headers  # retrying cannot help
            body = response.json()
            assert body["status"] == "failed"
            assert (
                "failed to load" in body["reason"] and "/nonexistent/model.gguf" in body["reason"]
            )
            assert "permanent" in body["reason"] and "fix MODEL" in body["reason"]
            assert http.get("/health/live").status_code == 200

            refused = http.post("/generate/text", json={"prompt": "hi"})
            assert refused.status_code == 503
            assert "retry-after" not in refused.headers
            assert refused.json()["error"]["code"] == "model_load_failed"
            assert "fix MODEL" in refused.json()["error"]["message"]

        # The container probe (Docker HEALTHCHECK) prints the same reason.
        monkeypatch.setenv("HEALTHCHECK_URL", f"{broken.base_url}/health/ready")
        probe = subprocess.run(
            [sys.executable, "-m", "genai_service.healthcheck"], capture_output=True, text=True
        )
        assert probe.returncode == 1 and "permanent" in probe.stderr
    failures = [entry for entry in logs if entry["event"] == "model_load_failed"]
    assert len(failures) == 1  # said once, not in a retry loop
    assert failures[0]["setting"] == "MODEL" and "restart" in failures[0]["fix"]


def test_a_failed_embedding_model_names_its_setting(tmp_path: Path) -> None:
    # The chat model is the fake engine: only the embedding model's failure matters here.
    with run_server(
        engine_factory=lambda _: FakeEngine(), embedding_model=str(tmp_path / "missing"), wait=False
    ) as broken:
        deadline = time.monotonic() + 30
        while not broken.state.failed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "fix EMBEDDING_MODEL" in broken.state.reason


@pytest.mark.parametrize(
    ("env", "show", "visible"),
    [("DEV", False, True), ("PROD", False, False), ("PROD", True, True)],
)
def test_docs_hidden_in_production_unless_asked(env: str, show: bool, visible: bool) -> None:
    with run_server(build_env=env, show_docs_in_production=show) as running:
        with running.http() as http:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (http.get(path).status_code == 200) is visible


def test_probes_and_the_root_answer_head(server: RunningServer) -> None:
    # Many load balancers and uptime checkers probe with HEAD: the GET's status, no body.
    with server.http() as http:
        for path in ("/health/live", "/health/ready"):
            head = http.head(path)
            assert head.status_code == 200, path
            assert head.content == b""
        assert http.head("/").status_code == 307
        assert http.head("/playground").status_code == 200
        # HEAD stays out of the API description (one operation per probe).
        paths = http.get("/openapi.json").json()["paths"]
        assert set(paths["/health/live"]) == {"get"}
