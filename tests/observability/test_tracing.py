"""OpenTelemetry traces end to end: the real SDK and OTLP/HTTP exporter, sending to a collector
endpoint on loopback, for real generations of the SmolLM2 model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import MODEL_ID, run_server


class Collector:
    """A minimal OTLP/HTTP trace receiver: decodes every export into a list of spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, prefix: str) -> list[Any]:
        return [s for s in self.spans if s.name.startswith(prefix)]


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    collector = Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    yield collector
    collector.server.shutdown()


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values]
            if kind == "array_value"
            else getattr(value, kind)
        )
    return out


def test_generation_spans(collector: Collector) -> None:
    with run_server(n_threads=1, n_ctx=512) as server:
        client = server.openai()
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        list(client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=3, stream=True))
        deadline = time.monotonic() + 20
        while len(collector.named("text_completion")) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    (chat,) = collector.named(f"chat {MODEL_ID}")
    attrs = attributes(chat)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL_ID and attrs["gen_ai.request.max_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 5 and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert len(attrs["genai_service.request_id"]) >= 16  # the X-Request-ID of the request
    children = {s.name: s for s in collector.spans if s.parent_span_id == chat.span_id}
    assert {"queue", "prefill", "decode"} <= set(children)
    assert children["prefill"].end_time_unix_nano <= children["decode"].start_time_unix_nano
    # The HTTP server span is the generation's parent: one trace per request.
    (http_span,) = [s for s in collector.spans if s.span_id == chat.parent_span_id]
    assert http_span.trace_id == chat.trace_id and "POST" in http_span.name
    (completion,) = collector.named(f"text_completion {MODEL_ID}")
    assert attributes(completion)["gen_ai.usage.output_tokens"] == 3


def test_trace_context_reaches_the_upstream_server(collector: Collector) -> None:
    # Two real services, both exporting: ours in front with the upstream engine, and a second
    # genai-service as the "provider". The provider's server span joins the front's trace.
    with run_server(n_threads=1, n_ctx=512) as provider:
        with run_server(
            engine="upstream", model=MODEL_ID, upstream_base_url=f"{provider.base_url}/v1"
        ) as front:
            front.openai().chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
            )
            deadline = time.monotonic() + 20
            while len(collector.named(f"chat {MODEL_ID}")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    outer, inner = sorted(collector.named(f"chat {MODEL_ID}"), key=lambda s: s.start_time_unix_nano)
    assert attributes(outer)["gen_ai.system"] == "upstream"
    assert inner.trace_id == outer.trace_id  # one trace across both services
    by_id = {s.span_id: s for s in collector.spans}
    ancestors = set()
    span = inner
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        ancestors.add(span.span_id)
    assert outer.span_id in ancestors
