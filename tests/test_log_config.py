"""Logging: library chatter at first start stays out of the log unless LOG_LEVEL=debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import logging, sys, warnings
from genai_service.log_config import configure_logging

configure_logging(sys.argv[1])
import structlog

structlog.get_logger("genai").info("ours_info")
warnings.warn("tracer advice", UserWarning)
logging.getLogger("transformers.modeling_utils").warning("torch_dtype is deprecated")
# onnxruntime.quantization's advice goes to the root logger itself:
record = logging.LogRecord("root", logging.WARNING, "/x/onnxruntime/quantization/q.py", 1,
                           "Please consider to run pre-processing", None, None)
logging.getLogger().handle(record)
logging.getLogger("onnxruntime").error("library failure")
logging.getLogger("someapp").warning("plain library warning")
logging.getLogger("alembic.runtime.plugins").info("setup plugin")
"""


def _run(level: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, level], capture_output=True, text=True, check=True
    ).stderr


def test_library_advice_is_hidden_and_errors_are_kept() -> None:
    out = _run("info")
    assert "ours_info" in out
    assert "library failure" in out and "plain library warning" in out
    for noise in ("tracer advice", "torch_dtype", "pre-processing", "setup plugin"):
        assert noise not in out, out
    # Library lines are rendered like ours (level and timestamp), not Python's bare lastResort.
    line = next(line for line in out.splitlines() if "library failure" in line)
    assert "[error" in line and "T" in line.split()[0]


@pytest.mark.parametrize("level", ["debug"])
def test_debug_shows_library_advice(level: str) -> None:
    out = _run(level)
    assert "tracer advice" in out and "pre-processing" in out and "setup plugin" in out
