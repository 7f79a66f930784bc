"""Hugging Face checkpoint -> ONNX (optimum), then INT8 dynamic quantization (onnxruntime).

Needs the `export` extra (torch, transformers, optimum-onnx); the engine that runs the result
needs only onnxruntime and tokenizers. The output folder holds `model.onnx` (FP32),
`model.int8.onnx` (INT8 weights, when quantized) and the tokenizer and config files beside
them, so the folder alone is a servable model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Files beside the weights that the runtime needs: tokenizer, config, chat template, and the
# sentence-transformers pooling description (so embeddings pool as the original does).
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)

Kind = Literal["encoder", "causal-lm"]
Step = Callable[[str], None]


class ExportError(Exception):
    """The checkpoint cannot be exported (missing extra, unknown architecture, bad folder)."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    out_dir: Path
    kind: Kind
    fp32_bytes: int
    int8_bytes: int | None

    @property
    def ratio(self) -> float | None:
        return self.fp32_bytes / self.int8_bytes if self.int8_bytes else None


def export_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "optimum"))


def detect_kind(src: Path) -> Kind:
    """Causal LM when the config names a *ForCausalLM architecture, else an encoder."""
    config_file = src / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{src} is not a Hugging Face checkpoint folder (no config.json)")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    return "causal-lm" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def onnx_size(path: Path) -> int:
    """Size of an ONNX model including its external-data file, if it has one."""
    total = path.stat().st_size
    data = path.with_name(path.name + "_data")
    return total + (data.stat().st_size if data.exists() else 0)


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in SIDE_FILES:
        source = src / name
        if source.is_file() and not (dst / name).exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)


# Encoder families onnxruntime's transformer optimizer fuses (attention, layer norms, GELU).
_FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "mpnet": "bert"}


def quantize_int8(fp32: Path, int8: Path, model_type: str | None = None) -> None:
    """Dynamic quantization: INT8 weights, activations quantized on the fly (no calibration).

    Per-channel scales keep MiniLM's embeddings at cosine ~0.99 to FP32; one scale per
    tensor loses too much (~0.97) for the same size and speed. BERT-like encoders are fused
    first (one Attention op per layer), so the quantized MatMuls are not split by the small
    ops around them.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = fp32
    fused = fp32.with_name("model.fused.onnx")
    if model_type in _FUSABLE:
        from onnxruntime.transformers.optimizer import optimize_model

        # num_heads/hidden_size 0: read from the graph.
        optimize_model(
            str(fp32), model_type=_FUSABLE[model_type], num_heads=0, hidden_size=0, opt_level=1
        ).save_model_to_file(str(fused))
        source = fused
    try:
        quantize_dynamic(
            str(source),
            str(int8),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Fused ops come from the com.microsoft domain, which shape inference skips.
            extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        )
    finally:
        fused.unlink(missing_ok=True)


def export_onnx(
    src: Path,
    out: Path,
    *,
    quantize: Literal["int8"] | None = "int8",
    step: Step | None = None,
) -> ExportResult:
    """Export `src` into `out` (written to a temporary folder first, then moved in place)."""
    src, out = Path(src), Path(out)
    kind = detect_kind(src)
    if not export_available():
        raise ExportError(
            "exporting to ONNX needs torch, transformers and optimum: "
            "pip install torch==2.13.0 'genai-service[export]'"
        )
    say = step or (lambda _msg: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        say("export")
        from optimum.exporters.onnx import main_export

        main_export(
            str(src),
            str(work),
            task="text-generation-with-past" if kind == "causal-lm" else "feature-extraction",
            library_name="transformers",
            do_validation=False,
            local_files_only=True,
        )
        _copy_side_files(src, work)
        int8_bytes = None
        if quantize == "int8":
            say("quantize")
            model_type = json.loads((src / "config.json").read_text()).get("model_type")
            quantize_int8(
                work / FP32_FILE, work / INT8_FILE, model_type if kind == "encoder" else None
            )
            int8_bytes = onnx_size(work / INT8_FILE)
        fp32_bytes = onnx_size(work / FP32_FILE)
        say("save")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, kind, fp32_bytes, int8_bytes)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes starting on one cache (replicas, test workers) export once, not twice.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_exported(src: Path, out: Path, *, quantize: Literal["int8"] | None = "int8") -> Path:
    """Export at first use, reuse afterwards: the cached folder wins when it is complete."""
    wanted = INT8_FILE if quantize == "int8" else FP32_FILE
    if (out / wanted).is_file():
        return out
    with _locked(out.parent / f".{out.name}.lock"):
        if not (out / wanted).is_file():
            # The first start's one slow step: say what it is and that it happens once.
            log.info(
                "onnx_export_started",
                model=out.name,
                precision=quantize or "fp32",
                note="first start only, 16-30 s on 2 cores; the result is cached",
                cache=str(out),
            )
            started = time.perf_counter()
            export_onnx(src, out, quantize=quantize)
            log.info(
                "onnx_export_done", model=out.name, seconds=round(time.perf_counter() - started, 1)
            )
    return out
