"""Azure Functions entry point: the genai-service FastAPI app behind `func.AsgiFunctionApp`.

Deploy this folder with `func azure functionapp publish <app>` (Python, Linux, v2 programming
model). One function, `http_app_func`, takes every route (`/{*route}`; host.json sets the
route prefix to "" so the OpenAI paths stay `/v1/...`).

What the worker does with it:

- The app is built once per worker process, at import. The model loads once per worker, when
  the first request arrives (AsgiFunctionApp runs the ASGI lifespan then) on the worker's
  event loop, and stays loaded for every later invocation.
- `ReadyGate` makes a request that arrives before the model is ready wait for it (up to
  `READY_TIMEOUT` seconds, default 230: the HTTP trigger's own limit) instead of being answered
  503. The health routes pass straight through, so `/health/ready` still tells the truth.
- The settings come from app settings (environment variables) as anywhere else. Out of the box
  that is the embedded SmolLM2 (offline). Production: ENGINE=upstream with OPENAI_API_TOKEN from
  a Key Vault reference (README, "Deploy: serverless, platforms, VM").
- `stream: true` is answered, but buffered: AsgiFunctionApp collects the whole response before
  returning it, so the client gets the complete SSE body (every chunk, then `data: [DONE]`) at
  the end, not token by token.
"""

from __future__ import annotations

import os

import azure.functions as func

# Serverless defaults; every one can be overridden by an app setting of the same name.
for _name, _value in {
    "DATA_DIR": "/tmp/genai-service/data",  # the only writable place on Consumption plans
    "MODEL_CACHE_DIR": "/tmp/genai-service/models",
    "EMBEDDING_MODEL": "",  # the MiniLM export needs torch: not in a function package
    "ENGINE_PROCESS": "false",  # one process per worker; the platform restarts a crashed one
    "N_PARALLEL": "1",
    "LOG_JSON": "true",
}.items():
    os.environ.setdefault(_name, _value)

from genai_service.app import create_app  # noqa: E402
from genai_service.log_config import configure_logging  # noqa: E402
from genai_service.middleware import ReadyGate  # noqa: E402
from genai_service.settings import Settings  # noqa: E402

settings = Settings()
configure_logging(settings.log_level, settings.log_json)  # structlog to stderr: the platform's log
fastapi_app = create_app(settings)
asgi = ReadyGate(fastapi_app, float(os.environ.get("READY_TIMEOUT", "230")))
app = func.AsgiFunctionApp(app=asgi, http_auth_level=func.AuthLevel.ANONYMOUS)
