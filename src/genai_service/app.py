"""The application factory: `create_app(settings)`.

The lifespan starts loading the engine in the background and returns at once, so the
liveness probe answers while the model loads; readiness turns green only after the model has
produced a warm-up token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from genai_service import __version__
from genai_service.api import connection
from genai_service.api.auth import RATELIMIT_HEADERS, metrics_access, require_api_key, token_budget
from genai_service.api.errors import install_error_handlers
from genai_service.api.limits import message_limits
from genai_service.api.routes import (
    chat,
    completions,
    embeddings,
    generate,
    health,
    metrics,
    models,
    playground,
    responses,
    tokenize,
)
from genai_service.api.routes import docs as api_docs
from genai_service.api.storage_deps import completions_guard, include_storage_routes
from genai_service.engines.base import Cancellation, Engine, SamplingParams, collect
from genai_service.middleware import (
    DrainGate,
    RequestBodyGuard,
    RequestContextMiddleware,
)
from genai_service.observability import tracing
from genai_service.serving.generation import GenerationService
from genai_service.serving.limiter import GenerationLimiter
from genai_service.settings import Settings
from genai_service.state import ServiceState

log = structlog.get_logger(__name__)

# Request headers a browser may send cross-origin: ours, plus what the official openai JS SDK
# adds to every request (x-stainless-*: its platform telemetry; organization and project).
CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "X-API-Key",
    "OpenAI-Organization",
    "OpenAI-Project",
    "OpenAI-Beta",
    "Idempotency-Key",
    *(
        f"X-Stainless-{name}"
        for name in (
            "Lang",
            "Package-Version",
            "OS",
            "Arch",
            "Runtime",
            "Runtime-Version",
            "Retry-Count",
            "Timeout",
            "Helper-Method",
            "Helper",
            "Async",
            "Poll-Helper",
            "Custom-Poll-Interval",
        )
    ),
]

# Builds (not loads) the engine for the settings; may block on a download, so runs in a thread.
EngineFactory = Callable[[Settings], Engine]


def _default_factory(settings: Settings) -> Engine:
    from genai_service.engines import create_engine

    return create_engine(settings)


async def _warm_up(engine: Engine) -> None:
    prompt = await engine.text_prompt("Hello")
    await collect(
        engine.stream(prompt, SamplingParams(max_tokens=1, temperature=0.0), Cancellation())
    )


class ModelLoadFailed(Exception):
    """A model could not be loaded; `setting` names what to fix."""

    def __init__(self, setting: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.setting = setting


async def _load_more_models(state: ServiceState) -> None:
    """The embedding model and EXTRA_MODELS, after MODEL; readiness waits for all of them."""
    from genai_service.engines import create_model, model_specs

    settings = state.settings
    for spec in model_specs(settings):
        state.reason = f"loading {spec.kind} model '{spec.model}' ({spec.engine})"
        try:
            engine = await asyncio.to_thread(create_model, spec, settings)
            await engine.load()
        except Exception as exc:
            if not spec.optional:
                setting = "EXTRA_MODELS" if spec in settings.extra_models else "EMBEDDING_MODEL"
                raise ModelLoadFailed(setting, exc) from exc
            log.warning("optional_model_skipped", model=spec.model, error=str(exc))
            continue
        if spec.kind == "embedding":
            state.add_embedder(engine, spec.model)  # type: ignore[arg-type]
        else:
            state.add_engine(engine, spec.model)  # type: ignore[arg-type]
        log.info("model_ready", model=engine.info.id, engine=engine.info.engine, kind=spec.kind)


async def load_engines(state: ServiceState, factory: EngineFactory) -> None:
    settings = state.settings
    try:
        if settings.model:  # MODEL="" serves only the embedding and extra models
            state.reason = f"loading model '{settings.model}'"
            try:
                engine = await asyncio.to_thread(factory, settings)
                await engine.load()
            except Exception as exc:
                raise ModelLoadFailed("MODEL", exc) from exc
            state.add_engine(engine, settings.model)
            if settings.warmup and getattr(engine, "warmup", True):
                state.reason = "warming up"
                await _warm_up(engine)
            log.info("model_ready", model=engine.info.id, engine=engine.info.engine)
        await _load_more_models(state)
        # What start-up built (modules, models, routes) lives as long as the process: out of
        # the collector's sight, so a full collection walks only what requests allocate.
        gc.collect()
        gc.freeze()
        state.ready, state.reason = True, "ready"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # Stay alive and say why on /health/ready; a restart loop would hide the cause. Nothing
        # retries: the same settings fail the same way, so the reason says what to change.
        setting = exc.setting if isinstance(exc, ModelLoadFailed) else "MODEL"
        fix = (
            f"this is permanent: retrying will not help; fix {setting} (or the engine settings "
            "it needs) and restart the service"
        )
        state.failed = True
        state.reason = f"model failed to load: {str(exc).rstrip('.')}; {fix}"
        log.error("model_load_failed", setting=setting, error=str(exc), fix=fix)


class ServiceApp(FastAPI):
    """FastAPI, keeping each request's uvicorn connection for a direct stream (the one place
    the server's own `send` is seen: every middleware wraps it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            connection.remember(scope, send)
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, engine_factory: EngineFactory | None = None
) -> FastAPI:
    settings = settings or Settings()
    limiter = GenerationLimiter(
        settings.generation_slots, settings.max_queue, settings.queue_timeout
    )
    state = ServiceState(
        settings=settings, limiter=limiter, generations=GenerationService(settings, limiter)
    )
    factory = engine_factory or _default_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from genai_service.storage import open_storage

        app.state.storage = await open_storage(settings)  # never blocks on a database that is down
        loader = asyncio.create_task(load_engines(state, factory))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(BaseException):
                await loader
            state.ready, state.reason = False, "shutting down"
            for engine in state.all_models():
                await engine.close()
            await app.state.storage.close()  # flushes the usage ledger
            provider = getattr(app.state, "tracer_provider", None)
            if provider is not None:
                provider.shutdown()  # sends the spans still batched

    docs = settings.docs_enabled
    app = ServiceApp(
        title="genai-service",
        version=__version__,
        description="OpenAI-compatible generative-AI service.",
        lifespan=lifespan,
        docs_url=None,  # api/routes/docs.py serves /docs and /redoc without a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = state
    provider = tracing.configure(app)  # OTEL_EXPORTER_OTLP_ENDPOINT and the otel extra
    state.generations.tracer = tracing.generation_tracer(provider)
    install_error_handlers(app)

    # Every API route: who is asking, then MAX_MESSAGES / MAX_MESSAGE_CHARS on the body.
    auth = [Depends(require_api_key), Depends(message_limits)]
    # Generation routes: the key's daily tokens, and COMPLETIONS_WITHOUT_DATABASE.
    guarded = [*auth, Depends(token_budget), Depends(completions_guard)]
    app.include_router(health.router)
    # Scraped by Prometheus, not under /v1: open, or admin keys only (METRICS_REQUIRE_KEY).
    app.include_router(
        metrics.router,
        dependencies=[Depends(metrics_access)] if settings.metrics_require_key else [],
    )
    for router in (chat.router, completions.router, responses.router):
        app.include_router(router, prefix="/v1", dependencies=guarded)
    for router in (embeddings.router, models.router):
        app.include_router(router, prefix="/v1", dependencies=auth)
    app.include_router(generate.router, dependencies=guarded)
    app.include_router(tokenize.router, dependencies=auth)
    include_storage_routes(app, auth)  # conversations, usage and key management
    if docs:
        api_docs.install(app)
    if settings.playground_enabled:  # the page only; its API calls go through `auth`
        app.include_router(playground.router)

    # Innermost: every body is checked (size, valid Unicode) before any route parses it.
    app.add_middleware(
        RequestBodyGuard,
        max_bytes=settings.max_request_bytes,
    )
    if settings.allowed_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=["X-Request-ID", "Retry-After", *RATELIMIT_HEADERS],
        )
    # SIGTERM: new requests get 503 while those in flight finish (cli.py starts the drain).
    app.add_middleware(DrainGate, shutdown=state.generations.shutdown)
    app.add_middleware(RequestContextMiddleware)
    return app
