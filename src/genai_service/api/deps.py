"""Request dependencies: the service state and engine look-up (auth: api/auth.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from genai_service.api.errors import (
    APIError,
    engine_unavailable,
    load_failed,
    model_not_found,
    not_ready,
)
from genai_service.engines.base import EmbeddingEngine, Engine
from genai_service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain `def` dependency on a worker thread, a hop per request.
    return request.app.state.service  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


def resolve_engine(state: ServiceState, model: str | None) -> Engine:
    if not state.ready:
        raise load_failed(state.reason) if state.failed else not_ready(state.reason)
    engine = state.find(model)
    if engine is None:
        if state.find_embedder(model) is not None:
            raise wrong_kind(model or "", "an embedding model", "/v1/embeddings")
        raise model_not_found(model or "")
    trouble = getattr(engine, "unavailable", None)
    if trouble:
        raise engine_unavailable(f"The model engine is unavailable: {trouble}.")
    return engine


def resolve_embedder(state: ServiceState, model: str | None) -> EmbeddingEngine:
    if not state.ready:
        raise load_failed(state.reason) if state.failed else not_ready(state.reason)
    engine = state.find_embedder(model)
    if engine is None:
        if model is not None and state.find(model) is not None:
            raise wrong_kind(model, "a text-generation model", "/v1/chat/completions")
        raise model_not_found(model or "")
    trouble = getattr(engine, "unavailable", None)
    if trouble:
        raise engine_unavailable(f"The model engine is unavailable: {trouble}.")
    return engine


def wrong_kind(model: str, kind: str, route: str) -> APIError:
    return APIError(
        400,
        f"The model '{model}' is {kind}; use it with {route}.",
        param="model",
        code="model_not_supported",
    )
