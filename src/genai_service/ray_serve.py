"""Ray Serve: the genai-service FastAPI app as one Serve deployment (the `ray` extra).

`serve run deploy/ray/serve.yaml` (a local or remote cluster) or `serve deploy` / KubeRay's
RayService (production, deploy/ray/README.md) imports `genai_service.ray_serve:app`.

- Each replica is a Ray actor running the whole service: `create_app(Settings())`, its lifespan
  (model load, storage, engine process) run by Serve's ASGI integration. Settings come from the
  replica's environment, i.e. `runtime_env.env_vars` in the Serve config.
- A replica takes traffic only once its model is ready: Serve routes to a replica after its first
  health check passes, and `check_health` waits for the model there. Later health checks fail
  when the service is no longer ready, and Serve replaces the replica.
- Serve's proxy spreads requests over the replicas (fewest ongoing requests of two picked at
  random) and the autoscaler keeps ongoing requests per replica near `target_ongoing_requests`,
  which defaults to the service's generation slots: the signal that matters for an LLM.
- `N_THREADS` defaults to the CPUs Ray gave the replica (`ray_actor_options.num_cpus`), so
  several replicas on one node do not oversubscribe its cores.
- Every response carries `X-Serve-Replica`, the replica that answered it.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from starlette.types import Message, Receive, Scope, Send

from genai_service.app import create_app
from genai_service.log_config import configure_logging
from genai_service.middleware import ReadyGate
from genai_service.settings import Settings

REPLICA_HEADER = "x-serve-replica"
# How long a new replica may take to load its model before Serve gives up on it and retries.
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "600"))


class ReplicaHeader:
    """Names the replica that answered each HTTP response (X-Serve-Replica)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_asgi_app() -> FastAPI:
    """Runs in each replica when it starts (not in the driver): one service per replica."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        os.environ.setdefault("N_THREADS", str(max(1, int(cpus))))
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)  # stderr: Ray's worker log files
    fastapi_app = create_app(settings)
    fastapi_app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_tag)
    return fastapi_app


@serve.deployment(
    name="genai-service",
    # Defaults for the Serve config to override: one replica per CPU set, scaled on the
    # requests each replica has in flight (running + queued in the service's own limiter).
    ray_actor_options={"num_cpus": 2},
    max_ongoing_requests=8,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 4,
    },
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(build_asgi_app)
class GenAIService:
    """The Serve deployment; HTTP goes straight to the FastAPI app built above."""

    def __init__(self) -> None:
        self._was_ready = False

    async def check_health(self) -> None:
        app: FastAPI = self.app  # type: ignore[attr-defined]  # ASGIAppReplicaWrapper's
        service = app.state.service
        if not self._was_ready:  # the first check, during replica start-up: wait for the model
            await ReadyGate(app, READY_TIMEOUT).wait_ready()
        if not service.ready:
            raise RuntimeError(f"genai-service is not ready: {service.reason}")
        self._was_ready = True


app = GenAIService.bind()
