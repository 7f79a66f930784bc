"""llama.cpp's log lines in the service's logs: the routing rules, then the real library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from genai_service import log_config
from genai_service.engines.llama_cpp import LlamaCppEngine, llama_log
from genai_service.engines.llama_cpp.core import CoreConfig, start_scheduler
from genai_service.model_store import embedded_model_path

WARN, ERROR, INFO, CONT = 3, 4, 2, 5  # ggml_log_level


@pytest.fixture(autouse=True)
def fresh_line() -> Iterator[None]:
    llama_log._state.update(level="debug", text="")
    yield
    llama_log._state.update(level="debug", text="")


def test_a_line_in_pieces_is_logged_once_whole_at_its_level() -> None:
    assert llama_log.route(WARN, "llama_context: the KV cache ") is None
    assert llama_log.route(CONT, "is small\n") == (
        "warning",
        "llama_context: the KV cache is small",
    )
    assert llama_log.route(ERROR, "failed to decode\n") == ("error", "failed to decode")


def test_info_lines_are_debug_and_the_unified_context_warning_is_dropped() -> None:
    assert llama_log.route(INFO, "load_tensors: CPU model buffer size = 90 MiB\n") == (
        "debug",
        "load_tensors: CPU model buffer size = 90 MiB",
    )
    overflow = "n_ctx_seq (16384) > n_ctx_train (8192) -- possible training context overflow\n"
    assert llama_log.route(WARN, f"llama_context: {overflow}") is None
    assert llama_log.route(INFO, "\n") is None  # blank lines


def test_the_callback_logs_one_structured_event() -> None:
    with capture_logs() as logs:
        llama_log._on_log(WARN, b"ggml: something odd\n", None)
    assert logs == [
        {"event": "llama_cpp", "message": "ggml: something odd", "log_level": "warning"}
    ]


def test_the_engine_process_logs_as_the_api_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_config, "_current", ("debug", True))
    engine = LlamaCppEngine(Path("model.gguf"))
    assert (engine.config.log_level, engine.config.log_json) == ("debug", True)


def test_real_llama_cpp_no_raw_warning_and_ours_for_a_context_beyond_training(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """One sequence of 16384 tokens on SmolLM2 (trained on 8192): llama.cpp's own warning no
    longer reaches stderr raw; the scheduler's says what a request may reach."""
    config = CoreConfig(
        model_path=str(embedded_model_path()), model_id="m", n_ctx=16384, n_parallel=1
    )
    with capture_logs() as logs:
        model, scheduler = start_scheduler(config, lambda kind, value: None)
        scheduler.close()
        model.close()
    assert "possible training context overflow" not in capfd.readouterr().err
    warnings = [e for e in logs if e["event"] == "context_beyond_training"]
    assert warnings == [
        {
            "event": "context_beyond_training",
            "n_ctx": 16384,
            "n_ctx_train": 8192,
            "log_level": "warning",
        }
    ]
