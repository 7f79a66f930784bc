"""The application factory: `create_app(settings)`.

The lifespan starts loading the engine in the background and returns at once, so the
liveness probe answers while the model loads; readiness turns green only after the model has
produced a warm-up token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from genai_service import __version__
from genai_service.api.deps import require_api_key
from genai_service.api.errors import install_error_handlers
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
                raise
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
            engine = await asyncio.to_thread(factory, settings)
            await engine.load()
            state.add_engine(engine, settings.model)
            if settings.warmup and getattr(engine, "warmup", True):
                state.reason = "warming up"
                await _warm_up(engine)
            log.info("model_ready", model=engine.info.id, engine=engine.info.engine)
        await _load_more_models(state)
        state.ready, state.reason = True, "ready"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # Stay alive and say why on /health/ready; a restart loop would hide the cause.
        state.reason = f"model failed to load: {exc}"
        log.error("model_load_failed", error=str(exc))


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
    app = FastAPI(
        title="genai-service",
        version=__version__,
        description="OpenAI-compatible generative-AI service.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = state
    provider = tracing.configure(app)  # OTEL_EXPORTER_OTLP_ENDPOINT and the otel extra
    state.generations.tracer = tracing.generation_tracer(provider)
    install_error_handlers(app)

    auth = [Depends(require_api_key)]
    guarded = [*auth, Depends(completions_guard)]  # COMPLETIONS_WITHOUT_DATABASE
    app.include_router(health.router)
    app.include_router(metrics.router)  # scraped by Prometheus: no API key, not under /v1
    for router in (chat.router, completions.router, responses.router):
        app.include_router(router, prefix="/v1", dependencies=guarded)
    for router in (embeddings.router, models.router):
        app.include_router(router, prefix="/v1", dependencies=auth)
    app.include_router(generate.router, dependencies=guarded)
    app.include_router(tokenize.router, dependencies=auth)
    include_storage_routes(app, auth)  # conversations and usage
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
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    # SIGTERM: new requests get 503 while those in flight finish (cli.py starts the drain).
    app.add_middleware(DrainGate, shutdown=state.generations.shutdown)
    app.add_middleware(RequestContextMiddleware)
    return app
