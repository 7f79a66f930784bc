"""`GenerationService`: the one owner of a generation request's life, for every route and engine.

A route turns its request into a prompt and sampling fields, then asks the service to `start`
a generation. The service:

- resolves the sampling parameters once (`to_sampling_params` on the request model), checking
  the prompt and `max_tokens` against the engine's real context window (400 if they do not fit);
- admits the request through the one limiter (429 with Retry-After past the queue);
- runs it with cancellation (a client that goes away stops the engine between tokens);
- records the Prometheus metrics (time to first token, inter-token latency, tokens, outcome),
  one usage-ledger record and an OpenTelemetry span (queue, prefill, decode), whatever the
  engine and however it ends;
- awaits an `on_finish` hook with the finished completion before the last chunk goes out, which
  is how a conversation stores its turn (a generation that does not finish stores nothing).

Routes only translate between their API's shapes and `GenerationChunk`s (see `api/sse.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from fastapi import Request
from opentelemetry import context as otel_context
from opentelemetry import trace

from genai_service import metrics
from genai_service.api.errors import APIError, busy, engine_unavailable, shutting_down
from genai_service.engines.base import (
    Cancellation,
    Completion,
    DirectStream,
    Engine,
    EngineError,
    EngineHTTPError,
    EngineUnavailable,
    GenerationChunk,
    Prompt,
    SamplingParams,
    TokenLogprob,
)
from genai_service.observability import tracing
from genai_service.serving.limiter import Busy, GenerationLimiter, Lease
from genai_service.serving.shutdown import Shutdown
from genai_service.serving.usage import Status, UsageRecorder
from genai_service.settings import Settings

log = structlog.get_logger(__name__)

OnFinish = Callable[[Completion], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """Server-side defaults for the fields a request leaves out."""

    max_tokens: int
    temperature: float
    top_p: float


class SamplingRequest(Protocol):
    """What a request model offers the service (see `api.schemas.SamplingFields`)."""

    def token_limit(self) -> int | None: ...

    def to_sampling_params(self, max_tokens: int, defaults: SamplingDefaults) -> SamplingParams: ...


def _choice(params: SamplingParams, index: int) -> SamplingParams:
    # With a seed, choice i samples with seed + i: reproducible, yet not n copies of one reply.
    if params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + index)


def check_context(engine: Engine, prompt: Prompt, requested: int | None, default: int) -> int:
    """The reply budget: `requested`, or the default clipped to the room left; 400 if no fit."""
    context = engine.info.context_length  # what the engine enforces (llama.cpp: per slot)
    n_prompt = len(prompt.token_ids)
    if not prompt.token_ids and not prompt.text:
        raise APIError(
            400,
            "The prompt is empty: there is nothing to continue from.",
            param="prompt",
            code="empty_prompt",
        )
    room = context - n_prompt
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{n_prompt} tokens. Shorten the prompt or the message history.",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and requested > room:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. You requested "
            f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} for the "
            f"completion). Lower max_tokens to at most {room}.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested if requested is not None else min(default, room)


def check_features(engine: Engine, params: SamplingParams) -> None:
    """400 for a request that needs what its engine cannot do: never silently ignored."""
    features = getattr(engine, "features", frozenset())
    if params.logprobs is not None and "logprobs" not in features:
        raise APIError(
            400,
            f"The '{engine.info.engine}' engine of model '{engine.info.id}' does not return "
            "logprobs; use a llama.cpp model.",
            param="logprobs",
            code="unsupported_parameter",
        )
    if params.ignore_eos:
        if "ignore_eos" not in features:
            raise APIError(
                400,
                f"The '{engine.info.engine}' engine of model '{engine.info.id}' does not support "
                "ignore_eos; use a llama.cpp model.",
                param="ignore_eos",
                code="unsupported_parameter",
            )
        if params.json_schema is not None:
            # A grammar ends the reply where the JSON ends: nothing may follow it.
            raise APIError(
                400,
                "ignore_eos cannot be combined with response_format or tools: the reply ends "
                "where its JSON ends.",
                param="ignore_eos",
                code="unsupported_parameter",
            )
    if params.json_schema is not None:
        if "json_schema" not in features:
            raise APIError(
                400,
                f"The '{engine.info.engine}' engine of model '{engine.info.id}' does not support "
                "response_format (structured outputs); use a llama.cpp model.",
                param="response_format",
                code="unsupported_parameter",
            )
        validate = getattr(engine, "validate", None)
        if validate is not None:
            try:
                validate(params)
            except ValueError as exc:
                raise APIError(
                    400, str(exc), param="response_format", code="unsupported_schema"
                ) from None


class GenerationService:
    def __init__(self, settings: Settings, limiter: GenerationLimiter) -> None:
        self.limiter = limiter
        self.tracer: trace.Tracer = tracing.tracer  # the app's provider's, when tracing is on
        self.drain_seconds = settings.shutdown_drain_seconds
        # SIGTERM's drain; past its timeout, running generations end (serving/shutdown.py).
        self.shutdown = Shutdown(settings.shutdown_drain_seconds)
        self.defaults = SamplingDefaults(
            max_tokens=settings.default_max_tokens,
            temperature=settings.default_temperature,
            top_p=settings.default_top_p,
        )

    def sampling(self, engine: Engine, prompt: Prompt, body: SamplingRequest) -> SamplingParams:
        max_tokens = check_context(engine, prompt, body.token_limit(), self.defaults.max_tokens)
        params = body.to_sampling_params(max_tokens, self.defaults)
        check_features(engine, params)
        return params

    async def start(
        self,
        request: Request | None,
        engine: Engine,
        prompt: Prompt,
        body: SamplingRequest,
        *,
        on_finish: OnFinish | None = None,
    ) -> Generation:
        """Check the limits, then wait for a slot; the generation runs when it is consumed."""
        params = self.sampling(engine, prompt, body)
        span = self._span(engine, params, body, request)
        (lease,) = await self._admit(1, span)
        generation = Generation(
            request, engine, prompt, params, lease, on_finish, span, self.tracer
        )
        generation.drain_seconds = self.drain_seconds
        generation.shutdown = self.shutdown
        return generation

    def _span(
        self,
        engine: Engine,
        params: SamplingParams,
        body: SamplingRequest,
        request: Request | None,
    ) -> trace.Span:
        """The generation's span (GenAI semantic conventions), under the HTTP request's; it
        carries the X-Request-ID, so a log line leads to its trace."""
        operation = getattr(body, "operation", "chat")
        request_id = getattr(request.state, "request_id", None) if request is not None else None
        span = self.tracer.start_span(
            f"{operation} {engine.info.id}",
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": engine.info.engine,
                "gen_ai.request.model": engine.info.id,
                "gen_ai.request.max_tokens": params.max_tokens,
                "gen_ai.request.temperature": params.temperature,
                "gen_ai.request.top_p": params.top_p,
            },
        )
        if request_id:
            span.set_attribute("genai_service.request_id", str(request_id))
        return span

    async def _admit(self, n: int, span: trace.Span) -> list[Lease]:
        """n slots from the one limiter (429 past its queue), timed as the span's `queue`."""
        leases: list[Lease] = []
        with self.tracer.start_as_current_span("queue", context=trace.set_span_in_context(span)):
            try:
                for _ in range(n):
                    leases.append(await self.limiter.acquire())
            except BaseException as exc:
                for lease in leases:
                    lease.release()
                span.set_status(trace.StatusCode.ERROR, "rejected")
                span.end()
                if isinstance(exc, Busy):
                    metrics.REJECTED.inc()
                    raise busy(exc.retry_after) from None
                raise
        return leases

    async def start_choices(
        self, request: Request | None, engine: Engine, prompt: Prompt, body: SamplingRequest
    ) -> list[Generation]:
        """`n` independent choices of one prompt, admitted together (one slot each)."""
        n = getattr(body, "n", 1)
        if n == 1:
            return [await self.start(request, engine, prompt, body)]
        if n > self.limiter.slots:
            raise APIError(
                400,
                f"n is {n}, but this server runs at most {self.limiter.slots} generations at "
                "once (MAX_CONCURRENT_GENERATIONS).",
                param="n",
                code="invalid_value",
            )
        params = self.sampling(engine, prompt, body)
        span = self._span(engine, params, body, request)
        span.set_attribute("gen_ai.request.choice.count", n)
        leases = await self._admit(n, span)
        context = trace.set_span_in_context(span)
        generations = [
            Generation(
                request,
                engine,
                prompt,
                _choice(params, i),
                lease,
                None,
                self.tracer.start_span(f"choice {i}", context=context),
                self.tracer,
            )
            for i, lease in enumerate(leases)
        ]
        # The request's span ends with its last choice.
        remaining = [n]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                span.end()

        for generation in generations:
            generation.on_span_end = one_done
            generation.drain_seconds = self.drain_seconds
            generation.shutdown = self.shutdown
        return generations


async def complete_all(generations: list[Generation]) -> list[Completion]:
    """Run n choices together (each a sequence of the same batch); the first failure wins."""
    if len(generations) == 1:
        return [await generations[0].complete()]
    results = await asyncio.gather(*(g.complete() for g in generations), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


class Generation:
    """One admitted generation: consume it once, with `stream()` or `complete()`."""

    def __init__(
        self,
        request: Request | None,
        engine: Engine,
        prompt: Prompt,
        params: SamplingParams,
        lease: Lease,
        on_finish: OnFinish | None,
        span: trace.Span = trace.INVALID_SPAN,
        tracer: trace.Tracer = tracing.tracer,
    ) -> None:
        self.request = request
        self._tracer = tracer
        self.engine = engine
        self.prompt = prompt
        self.params = params
        self.lease = lease
        self.cancel = Cancellation()
        self._on_finish = on_finish
        self._recorder = UsageRecorder(request, engine, prompt)
        self.result: Completion | None = None
        self.finished: Any = None  # what on_finish returned (a conversation's stored turn)
        self.span = span
        self.drain_seconds = 0.0  # set by the service: how long a stream may finish at shutdown
        self.shutdown: Shutdown | None = None  # set by the service: the drain's state
        self.on_span_end: Any = None  # n choices: the request's span ends with the last one
        # Set by the SSE layer before the stream starts, for an engine with "direct_stream":
        # the engine writes the text to the client and `stream()` yields only the last chunk.
        self.direct: DirectStream | None = None
        self._usage_deferred = False  # a direct stream's usage waits for the engine's report
        self._span_open = True

    def close(self) -> None:
        """Free the slot and stop the engine; safe to call again (covers never-started streams)."""
        self.cancel.cancel()
        self.lease.release()
        if not self._usage_deferred:
            self._recorder.finish("cancelled")
        self._end_span("cancelled")

    def _end_span(self, status: str, error: BaseException | None = None) -> None:
        if not self._span_open:
            return
        self._span_open = False
        span = self.span
        if self.result is not None:
            span.set_attribute("gen_ai.response.model", self.engine.info.id)
            span.set_attribute("gen_ai.response.finish_reasons", [self.result.finish_reason])
            span.set_attribute("gen_ai.usage.input_tokens", self.result.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", self.result.completion_tokens)
        span.set_attribute("genai_service.outcome", status)
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        span.end()
        if self.on_span_end is not None:
            self.on_span_end()

    async def stream(self) -> AsyncIterator[GenerationChunk]:
        """The engine's chunks; the last has finish_reason and comes after `on_finish`."""
        model = self.engine.info.id
        itl = metrics.ITL.tally()  # counted here, added to /metrics once at the end
        started = last_at = time.perf_counter()
        tokens = 0
        parts: list[str] = []
        logprobs: list[TokenLogprob] | None = [] if self.params.logprobs is not None else None
        status: Status = "cancelled"  # unless it runs to the end or fails
        failure: BaseException | None = None
        context = trace.set_span_in_context(self.span)
        # Current while the engine runs, so an upstream engine propagates it (traceparent).
        attached = otel_context.attach(context)
        phase = self._phase("prefill", context)  # until the first token
        direct = self.direct
        stop_direct: Callable[[], None] | None = None
        try:
            if direct is None:
                engine_chunks = self.engine.stream(self.prompt, self.params, self.cancel)
            else:
                engine_chunks = self.engine.stream(  # type: ignore[call-arg]
                    self.prompt, self.params, self.cancel, direct=direct
                )
                if self.shutdown is not None:
                    stop_direct = functools.partial(_interrupt, direct)
                    self.shutdown.on_halt.add(stop_direct)
            # aclosing: a consumer that leaves closes the engine's stream now, not at GC.
            async with contextlib.aclosing(engine_chunks) as chunks:
                async for chunk in chunks:
                    if self.shutdown is not None and self.shutdown.halted:
                        # The drain's timeout passed: end here, with an error the client sees.
                        raise shutting_down()
                    now = time.perf_counter()
                    if chunk.text:
                        if not parts:
                            metrics.TTFT.labels(model).observe(now - started)
                            phase.end()
                            phase = self._phase("decode", context)
                        else:
                            itl.observe(now - last_at)
                        last_at = now
                        parts.append(chunk.text)
                    self._recorder.piece(chunk)
                    if logprobs is not None and chunk.logprobs:
                        logprobs.extend(chunk.logprobs)
                    if chunk.finish_reason is None:
                        yield chunk
                        continue
                    if direct is not None and direct.ended:
                        first_ns = self._direct_timings(direct, started, itl)
                        if first_ns is not None:
                            phase.end(end_time=first_ns)
                            phase = self._phase("decode", context, first_ns)
                        parts.append(direct.text)
                    metrics.GENERATED_TOKENS.labels(model).inc(chunk.completion_tokens)
                    metrics.PROMPT_TOKENS.labels(model).inc(chunk.prompt_tokens)
                    tokens = chunk.completion_tokens
                    self.result = Completion(
                        text="".join(parts),
                        finish_reason=chunk.finish_reason,
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens,
                        logprobs=logprobs,
                    )
                    if self._on_finish is not None:
                        self.finished = await self._on_finish(self.result)
                    status = "ok"
                    metrics.REQUESTS.labels(model, chunk.finish_reason).inc()
                    yield chunk
                    return
            raise RuntimeError("the engine ended a generation without a finish reason")
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the consumer went away: "cancelled"
        except EngineError as exc:
            status, failure = "error", exc
            if direct is not None and self.shutdown is not None and self.shutdown.halted:
                raise shutting_down() from None  # stop_direct ended it ("cancelled")
            raise
        except BaseException as exc:
            status, failure = "error", exc
            raise
        finally:
            if stop_direct is not None and self.shutdown is not None:
                self.shutdown.on_halt.discard(stop_direct)
            phase.end()
            otel_context.detach(attached)
            self.cancel.cancel()  # stop the engine at once (client gone, error)
            self.lease.release()
            if status != "ok":
                metrics.REQUESTS.labels(model, status).inc()
            if direct is not None and direct.report_due:
                # The engine wrote to a client that left: count what it wrote once it reports.
                # (A submit that failed gave it no socket: recorded now, as any other.)
                self._usage_deferred = True
                direct.on_end = functools.partial(self._direct_left, direct, status, started, itl)
            else:
                if status != "ok" and tokens == 0:
                    metrics.GENERATED_TOKENS.labels(model).inc(len(parts))
                metrics.ITL.add(model, itl)
                self._recorder.finish(status, self.result)
            self._end_span(status, failure)

    def _direct_timings(
        self, direct: DirectStream, started: float, itl: metrics.Tally
    ) -> int | None:
        """Time to first token and the inter-token gaps of a stream the engine wrote, from its
        report; returns when the first token went out (time.time_ns), None if none did."""
        if direct.first_at is None:
            return None
        # The engine's clock is time.monotonic(), system-wide; `started` is perf_counter's.
        first = direct.first_at + (time.perf_counter() - time.monotonic())
        metrics.TTFT.labels(self.engine.info.id).observe(first - started)
        for gap in direct.gaps:
            itl.observe(gap)
        self._recorder.first_piece_at = first
        self._recorder.pieces = len(direct.gaps) + 1
        return time.time_ns() - int((time.perf_counter() - first) * 1e9)

    def _direct_left(
        self, direct: DirectStream, status: Status, started: float, itl: metrics.Tally
    ) -> None:
        """The engine's report on a direct stream its consumer left: usage and metrics."""
        model = self.engine.info.id
        self._direct_timings(direct, started, itl)
        metrics.GENERATED_TOKENS.labels(model).inc(self._recorder.pieces)
        metrics.ITL.add(model, itl)
        self._recorder.finish(status, self.result)

    def _phase(self, name: str, context: Any, start_ns: int | None = None) -> trace.Span:
        return self._tracer.start_span(name, context=context, start_time=start_ns)

    async def complete(self) -> Completion:
        """Run to the end (no streaming); stops as soon as the client disconnects."""
        task = asyncio.ensure_future(self._drain())
        watcher = (
            asyncio.ensure_future(_watch_disconnect(self.request, self.cancel, task))
            if self.request is not None
            else None
        )
        try:
            return await task
        except (APIError, EngineHTTPError):
            raise  # EngineHTTPError: an upstream server's answer, passed on as it is
        except EngineUnavailable as exc:
            log.warning("generation_engine_unavailable", error=str(exc))
            raise engine_unavailable(str(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception:
            # Answered here (not by the last-resort handler) so the connection stays usable.
            log.exception("generation_failed")
            raise APIError(
                500, "The server had an error while generating.", code="engine_error"
            ) from None
        finally:
            if watcher is not None:
                watcher.cancel()
            self.close()

    async def _drain(self) -> Completion:
        async for _ in self.stream():
            pass
        assert self.result is not None
        return self.result


def _interrupt(direct: DirectStream) -> None:
    """The drain's timeout stops a direct stream through its engine (no token of its own
    reaches `Generation.stream`, where other streams are stopped)."""
    if direct.interrupt is not None:
        direct.interrupt()


async def _watch_disconnect(
    request: Request, cancel: Cancellation, task: asyncio.Future[Any]
) -> None:
    # The body is already read, so the next ASGI message is the client hanging up.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.cancel()
            task.cancel()
            return
