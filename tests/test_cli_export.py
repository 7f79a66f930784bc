"""`genai-service models export-onnx`: checkpoint folder -> ONNX FP32 + INT8, files beside it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from genai_service.cli import app
from genai_service.engines.onnx_export import FP32_FILE, INT8_FILE, detect_kind, onnx_size
from tests.conftest import ExportRun


def test_export_causal_lm_with_int8(tiny_llama: Path, tiny_llama_onnx: ExportRun) -> None:
    assert tiny_llama_onnx.exit_code == 0, tiny_llama_onnx.output
    out = tiny_llama_onnx.out
    assert detect_kind(tiny_llama) == "causal-lm"
    for name in (FP32_FILE, INT8_FILE, "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    # Sizes are reported, and INT8 is smaller.
    assert "model.int8.onnx (int8)" in tiny_llama_onnx.output
    assert "smaller by" in tiny_llama_onnx.output
    assert onnx_size(out / INT8_FILE) < onnx_size(out / FP32_FILE)
    # stdout is the folder alone (for scripts); the progress and the table are on stderr.
    assert tiny_llama_onnx.output.startswith(f"{out}\n")
    # And nothing else: no TracerWarning from torch, no root-logger advice from onnxruntime.
    assert "warning" not in tiny_llama_onnx.stderr.lower(), tiny_llama_onnx.stderr
    # No half-written folder is left beside the output.
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "export-onnx", str(tmp_path), str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no config.json" in result.output
    assert not (tmp_path / "o").exists()


def test_unknown_quantization_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["models", "export-onnx", str(tmp_path), str(tmp_path / "o"), "--quantize", "int4"]
    )
    assert result.exit_code == 2
    assert "int8" in result.output
