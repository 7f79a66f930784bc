"""Request dependencies: the service state, API-key auth and engine look-up."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from genai_service.api.errors import (
    APIError,
    engine_unavailable,
    load_failed,
    model_not_found,
    not_ready,
    unauthorized,
)
from genai_service.engines.base import EmbeddingEngine, Engine
from genai_service.state import ServiceState
from genai_service.storage.models import ANONYMOUS


def get_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: State) -> None:
    """`Authorization: Bearer <key>` (or `X-API-Key: <key>`) against the configured keys, in
    constant time.

    Every key is compared (no early exit), so timing tells nothing about which one nearly
    matched; keys never reach a log line.
    """
    keys = state.settings.api_key_values
    if not keys:
        return
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized(
                "Malformed Authorization header: expected 'Authorization: Bearer <key>'."
            )
    else:
        token = request.headers.get("x-api-key", "")
        if not token.strip():
            raise unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
    presented = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise unauthorized("Incorrect API key provided.")
    # A non-secret name for the key, for the usage ledger: it cannot be turned back into it.
    request.state.api_key_id = hashlib.sha256(presented).hexdigest()[:8]


def get_principal(request: Request, _auth: Annotated[None, Depends(require_api_key)]) -> str:
    """Who is asking: the API key's non-secret id, or `anonymous` when API keys are off.

    Depends on `require_api_key` itself (FastAPI runs it once per request), so no route can
    read a principal that was not authenticated.
    """
    return getattr(request.state, "api_key_id", None) or ANONYMOUS


Principal = Annotated[str, Depends(get_principal)]


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
