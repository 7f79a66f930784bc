"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from genai_service.cli import app
from tests.conftest import MODEL_ID, free_port

BIN = Path(sys.executable).parent


def test_help_lists_serve_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--model",
        "--engine",
        "--threads",
        "--ctx-size",
        "--max-concurrent",
    ):
        assert option in result.output


def test_models_path_prints_the_embedded_file() -> None:
    result = CliRunner().invoke(app, ["models", "path", "smollm2"])
    assert result.exit_code == 0
    assert result.output.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_serve_answers_a_chat_completion(tmp_path: Path, minilm_cache: Path) -> None:
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    # A plain serve also serves the embedding model; its ONNX export (made once, at first use)
    # is already in this cache, as after any earlier start.
    env["MODEL_CACHE_DIR"] = str(minilm_cache)
    process = subprocess.Popen(
        [
            str(BIN / "genai-service"),
            "serve",
            "--port",
            str(port),
            "--ctx-size",
            "1024",
            "--threads",
            "2",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("service did not become ready")
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Hi!"}],
                "max_tokens": 8,
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert json.loads(response.text)["choices"][0]["message"]["content"]
        assert response.headers["x-request-id"]
        embedded = httpx.post(f"{base}/v1/embeddings", json={"input": "Hi!"}, timeout=60)
        assert embedded.status_code == 200, embedded.text
        assert len(embedded.json()["data"][0]["embedding"]) == 384
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "model_ready" in output and "Application shutdown complete" in output
