"""`/metrics`: Prometheus exposition of the service's counters, gauges and histograms."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from genai_service import metrics
from genai_service.api.deps import State

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: State, request: Request) -> Response:
    # Point-in-time gauges are read now; counters and histograms were recorded as they happened.
    storage = getattr(request.app.state, "storage", None)
    if storage is not None:  # a recent ping (the monitor's or a probe's) is reused
        db = storage.db
        metrics.DATABASE_UP.set(1 if await db.check(max_age=5) and db.schema_ready else 0)
    pending = sum(getattr(e, "pending", 0) for e in state.engines.values())
    metrics.QUEUE_DEPTH.set(state.limiter.waiting + pending)
    for model_id, engine in state.engines.items():
        metrics.ACTIVE_SEQUENCES.labels(model_id).set(engine.active)
        # 0 while the engine process restarts after a crash (see genai_engine_crashes_total).
        metrics.ENGINE_UP.labels(model_id).set(0 if getattr(engine, "unavailable", None) else 1)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
