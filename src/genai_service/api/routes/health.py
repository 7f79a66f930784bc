"""Liveness and readiness probes (Kubernetes, Docker HEALTHCHECK, load balancers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from genai_service.api.deps import State
from genai_service.api.schemas import Health

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Health)
async def live() -> Health:
    # Up as soon as the process serves HTTP, model or not: restarting would not help loading.
    return Health(status="ok")


@router.get("/ready", response_model=Health)
async def ready(state: State) -> JSONResponse:
    models = {
        model_id: {"engine": engine.info.engine, "context_length": engine.info.context_length}
        for model_id, engine in [*state.engines.items(), *state.embedders.items()]
    }
    if state.ready:
        return JSONResponse(Health(status="ok", models=models).model_dump())
    body = Health(status="unavailable", reason=state.reason, models=models)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
