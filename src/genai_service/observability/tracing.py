"""OpenTelemetry traces, optional (`pip install 'genai-service[otel]'`).

With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and the extra installed), every HTTP request gets a
server span (FastAPI instrumentation), and every generation a child span named
`chat <model>` / `text_completion <model>` with children `queue` (waiting for a slot),
`prefill` (until the first token) and `decode`. Attributes follow the OpenTelemetry GenAI
semantic conventions (`gen_ai.*`). Spans go out over OTLP/HTTP in batches; the standard `OTEL_*`
variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, ...) apply. Without the endpoint the
tracer is OpenTelemetry's no-op: nothing is recorded and nothing costs.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry import trace

log = structlog.get_logger(__name__)

tracer = trace.get_tracer("genai_service")


def configure(app: FastAPI) -> Any:
    """Install the SDK, the OTLP exporter and the FastAPI instrumentation; returns the provider
    (None when tracing is off or the extra is missing)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing_unavailable",
            reason="OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'genai-service[otel]')",
        )
        return None
    name = os.environ.get("OTEL_SERVICE_NAME", "genai-service")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="health/.*,metrics"
    )
    app.state.tracer_provider = provider
    log.info("tracing_enabled", endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"], service=name)
    return provider


def generation_tracer(app_provider: Any) -> trace.Tracer:
    """The tracer generations use: the app's provider when configured, else the global one."""
    if app_provider is None:
        return tracer
    return app_provider.get_tracer("genai_service")  # type: ignore[no-any-return]
