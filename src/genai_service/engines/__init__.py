"""Inference engines behind one protocol (`engines.base.Engine`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genai_service.engines.base import Engine

if TYPE_CHECKING:
    from genai_service.settings import Settings

ENGINES = ("llama.cpp",)


def create_engine(settings: Settings) -> Engine:
    """Build (but do not load) the engine the settings ask for; may download the model."""
    from genai_service.model_store import resolve_model

    if settings.engine not in ENGINES:
        raise ValueError(f"unknown engine '{settings.engine}'; choose one of {', '.join(ENGINES)}")
    resolved = resolve_model(
        settings.model, settings.model_cache_dir, settings.served_model_name, settings.hf_endpoint
    )
    from genai_service.engines.llama_cpp import LlamaCppEngine

    return LlamaCppEngine(
        resolved.path,
        model_id=resolved.model_id,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
    )
