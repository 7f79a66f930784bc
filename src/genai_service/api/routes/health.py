"""Liveness and readiness probes (Kubernetes, Docker HEALTHCHECK, load balancers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genai_service.api.deps import State
from genai_service.api.schemas import Health

router = APIRouter(prefix="/health", tags=["health"])


# HEAD too: many load balancers and uptime checkers probe with it (uvicorn drops the body).
@router.head("/live", include_in_schema=False)
@router.get("/live", response_model=Health)
async def live() -> Health:
    # Up as soon as the process serves HTTP, model or not: restarting would not help loading.
    return Health(status="ok")


async def _database(request: Request) -> tuple[bool, dict[str, Any] | None]:
    """Pings the database; a schema behind the code counts as down."""
    storage = getattr(request.app.state, "storage", None)
    if storage is None:
        return True, None
    db = storage.db
    up = await db.check(max_age=0) and db.schema_ready
    return up, {
        "status": "ok" if up else "unavailable",
        "dialect": db.dialect,
        "reason": None if up else (db.schema_reason if db.healthy else db.reason),
        "pending_usage_records": storage.ledger.pending,
    }


@router.head("/ready", include_in_schema=False)
@router.get("/ready", response_model=Health)
async def ready(state: State, request: Request) -> JSONResponse:
    models = {
        model_id: {"engine": engine.info.engine, "context_length": engine.info.context_length}
        for model_id, engine in [*state.engines.items(), *state.embedders.items()]
    }
    shutdown = state.generations.shutdown
    if shutdown.draining:
        # SIGTERM: out of the load balancer at once, while running requests finish.
        body = Health(status="unavailable", reason="shutting down", models=models)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    db_up, database = await _database(request)
    if state.failed:
        # No Retry-After: the same settings fail the same way; the reason says what to fix.
        body = Health(status="failed", reason=state.reason, models=models, database=database)
        return JSONResponse(body.model_dump(), status_code=503)
    trouble = state.engine_trouble() if state.ready else None
    if trouble:
        # An engine process crashed and restarts: out of the load balancer until it is back.
        body = Health(status="unavailable", reason=trouble, models=models, database=database)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    if state.ready and db_up:
        return JSONResponse(Health(status="ok", models=models, database=database).model_dump())
    if state.ready and state.settings.completions_without_database:
        # Plain completions still serve: stay in the load balancer, but say what is wrong.
        reason = database["reason"] if database else None
        body = Health(status="degraded", reason=reason, models=models, database=database)
        return JSONResponse(body.model_dump())
    reason = state.reason if not state.ready else (database or {}).get("reason")
    body = Health(status="unavailable", reason=reason, models=models, database=database)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
