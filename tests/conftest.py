"""Shared fixtures: real servers on loopback running the real embedded SmolLM2 model.

Servers run uvicorn in a thread of the test process, so tests reach them over real HTTP (the
official `openai` SDK works unchanged) and can still look at the service state directly.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog
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


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something truthy, and return that; fail after
    `timeout` seconds. The one polling helper of the suite (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_ready(
    base: str, process: subprocess.Popen[Any], timeout: float, log: Path | None = None
) -> None:
    """Until `base`/health/ready answers 200; fails at once if the server `process` exits
    (with the end of its `log`, when it writes one)."""

    def ready() -> bool:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise AssertionError(f"the server exited ({process.returncode}) before ready\n{tail}")
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout, f"{base} to be ready")


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
    port: int | None = None,
    **overrides: Any,
) -> Iterator[RunningServer]:
    settings = settings or make_settings(**overrides)
    app = create_app(settings, engine_factory)
    port = port or free_port()
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
    # The embedding model is off unless a test asks for it (tests/api/test_embeddings.py).
    values: dict[str, Any] = {
        "n_ctx": 2048,
        "max_queue": 4,
        "log_level": "warning",
        "embedding_model": "",
    }
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
def keyed_server() -> Iterator[RunningServer]:
    """Embedded SQLite with two API keys (KEY_A, KEY_B) and an admin key (KEY_ADMIN): the
    tenant-isolation and key-management tests."""
    from tests.postgres import KEY_A, KEY_ADMIN, KEY_B

    with run_server(api_keys=[KEY_A, KEY_B], admin_api_keys=[KEY_ADMIN], n_threads=1) as running:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The Ray driver changes process-wide state (its tqdm patch of builtins.print, undone by
    # RAY_TQDM_PATCH_PRINT=0 and test_ray's teardown; a driver connection): its tests run
    # last, so whatever it leaves behind cannot reach another test.
    items.sort(key=lambda item: item.nodeid.startswith("tests/deploy/test_ray.py"))


@pytest.fixture(autouse=True)
def _logging_config_back() -> Iterator[None]:
    # A CLI command run in-process (CliRunner) configures logging onto the runner's stderr,
    # which is closed afterwards: later servers in this process must get theirs back.
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


# --- models for the engine tests (ONNX, transformers, export) ---------------------------------
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Llama architecture (2 layers, hidden 64) with random weights and a byte-level
    BPE tokenizer trained here, saved as a Hugging Face checkpoint folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The quick brown fox jumps over the lazy dog. Hello world! Ünïcödé 日本語."] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@dataclass
class ExportRun:
    out: Path
    exit_code: int
    output: str  # stdout, then stderr
    stderr: str


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    """The tiny Llama exported by the installed command, run as a user runs it (a process of
    its own, so what libraries print to its stderr is seen): `models export-onnx ... int8`."""
    out = tmp_path_factory.mktemp("tiny-llama-onnx") / "tiny-llama"
    command = Path(sys.executable).parent / "genai-service"
    result = subprocess.run(
        [str(command), "models", "export-onnx", str(tiny_llama), str(out), "--quantize", "int8"],
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "LOG_LEVEL": "info"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return ExportRun(out, result.returncode, result.stdout + result.stderr, result.stderr)


@dataclass
class FirstStart:
    cache: Path
    logs: list[dict[str, Any]]  # what the service logged (structlog) while exporting


@pytest.fixture(scope="session")
def minilm_first_start(tmp_path_factory: pytest.TempPathFactory) -> FirstStart:
    """MiniLM exported to ONNX (FP32 + INT8) into an empty cache by the first-use path."""
    from structlog.testing import capture_logs

    from genai_service.engines import resolve_onnx_model

    cache = tmp_path_factory.mktemp("model-cache")
    with capture_logs() as logs:
        resolve_onnx_model("minilm", make_settings(model_cache_dir=cache))
    return FirstStart(cache, logs)


@pytest.fixture(scope="session")
def minilm_cache(minilm_first_start: FirstStart) -> Path:
    """A model cache holding MiniLM exported to ONNX (FP32 + INT8) by the first-use path."""
    return minilm_first_start.cache
