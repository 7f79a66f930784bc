"""AWS Lambda entry point: `handler(event, context)`, the genai-service FastAPI app via Mangum.

It serves API Gateway HTTP API (payload v2), REST API (v1) and Function URL events.

- The model loads once per execution environment, during the init phase (at import, below),
  never once per invocation: Mangum runs the ASGI lifespan on every invocation when asked to,
  so it is told `lifespan="off"` and this module runs the app's lifespan itself, once, on an
  event loop that lives as long as the environment. Lambda freezes that loop between
  invocations and every invocation runs it again.
- Init waits for readiness (up to `READY_TIMEOUT` seconds, default 600). Should a request
  still arrive first (an init cut short), `ReadyGate` makes it wait instead of answering 503.
- Responses are buffered: Mangum returns one payload (6 MB at most). `stream: true` gets the
  whole SSE body at the end. Real streaming: the Lambda Web Adapter (README).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

# Serverless defaults; every one can be overridden by the function's environment.
for _name, _value in {
    "DATA_DIR": "/tmp/genai-service/data",  # /tmp is the only writable path on Lambda
    "MODEL_CACHE_DIR": "/tmp/genai-service/models",
    "EMBEDDING_MODEL": "",
    "ENGINE_PROCESS": "false",  # one process; Lambda has no /dev/shm and replaces a crashed one
    "N_PARALLEL": "1",  # an execution environment serves one request at a time
    "LOG_JSON": "true",
}.items():
    os.environ.setdefault(_name, _value)

from mangum import Mangum  # noqa: E402

from genai_service.app import create_app  # noqa: E402
from genai_service.log_config import configure_logging  # noqa: E402
from genai_service.middleware import ReadyGate  # noqa: E402
from genai_service.settings import Settings  # noqa: E402


class Lifespan:
    """Runs the ASGI lifespan once on `loop` and keeps it open until `shutdown()`."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.loop = app, loop
        self.inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.started = loop.create_future()
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            self.started.set_result(True)
        elif message["type"] == "lifespan.startup.failed":
            self.started.set_exception(RuntimeError(message.get("message", "startup failed")))

    def startup(self) -> None:
        async def start() -> None:
            self.task = asyncio.ensure_future(
                self.app(
                    {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                    self.inbox.get,
                    self._send,
                )
            )
            await self.inbox.put({"type": "lifespan.startup"})
            await self.started

        self.loop.run_until_complete(start())

    def shutdown(self) -> None:
        async def stop() -> None:
            await self.inbox.put({"type": "lifespan.shutdown"})
            if self.task is not None:
                await self.task

        self.loop.run_until_complete(stop())


loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
settings = Settings()
configure_logging(settings.log_level, settings.log_json)  # structlog to stderr: the platform's log
fastapi_app = create_app(settings)
gate = ReadyGate(fastapi_app, float(os.environ.get("READY_TIMEOUT", "600")))
lifespan = Lifespan(fastapi_app, loop)
lifespan.startup()  # init phase: storage opens and the model starts loading ...
loop.run_until_complete(gate.wait_ready())  # ... and is ready before the first invocation
mangum = Mangum(gate, lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    asyncio.set_event_loop(loop)  # Mangum runs the app on the current loop: ours
    return mangum(event, context)
