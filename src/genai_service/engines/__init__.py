"""Inference engines behind one protocol (`engines.base.Engine`, `EmbeddingEngine`), built by
name through `engines.registry`. Each engine lives in its own module, imported only when asked
for."""

from __future__ import annotations

from genai_service.engines.base import Engine
from genai_service.engines.registry import (
    EMBEDDING_ENGINES,
    ENGINES,
    create_model,
    resolve_onnx_model,
)
from genai_service.settings import ModelSpec, Settings

__all__ = [
    "EMBEDDING_ENGINES",
    "ENGINES",
    "create_engine",
    "create_model",
    "main_spec",
    "model_specs",
    "resolve_onnx_model",
]


def main_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        model=settings.model,
        engine=settings.engine,
        served_model_name=settings.served_model_name,
    )


def model_specs(settings: Settings) -> list[ModelSpec]:
    """Every model to serve besides MODEL: the embedding model, then EXTRA_MODELS."""
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
