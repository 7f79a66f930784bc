"""Serving logic shared by the routes: admission, sampling limits, streaming, cancellation.

Routes stay thin: they validate, pick the engine, and hand over to these helpers, which speak
only the engine protocol (no engine code lives in `api/`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from genai_service import metrics
from genai_service.api.errors import APIError, busy, engine_unavailable, error_body
from genai_service.api.recording import GenerationRecorder
from genai_service.api.schemas import Usage
from genai_service.engines.base import (
    Cancellation,
    Completion,
    Engine,
    EngineHTTPError,
    EngineUnavailable,
    GenerationChunk,
    Prompt,
    SamplingParams,
    collect,
)
from genai_service.limiter import Busy, Lease
from genai_service.state import ServiceState

log = structlog.get_logger(__name__)


def usage_of(result: GenerationChunk | Completion) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def sampling_params(
    state: ServiceState,
    engine: Engine,
    prompt: Prompt,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
) -> SamplingParams:
    """Check the prompt against the context window and fill in server defaults."""
    settings = state.settings
    context = engine.info.context_length
    n_prompt = len(prompt.token_ids)
    room = context - n_prompt
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{n_prompt} tokens. Shorten the prompt or the message history.",
            param="messages",
            code="context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > room:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. You requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
            f"completion). Lower max_tokens to at most {room}.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else min(settings.default_max_tokens, room),
        temperature=settings.default_temperature if temperature is None else temperature,
        top_p=settings.default_top_p if top_p is None else top_p,
        stop=stop,
        seed=seed,
    )


class SamplingFields(Protocol):
    """The sampling fields an OpenAI-style request body carries."""

    temperature: float | None
    top_p: float | None
    seed: int | None

    def stop_sequences(self) -> tuple[str, ...]: ...


def request_sampling(
    state: ServiceState,
    engine: Engine,
    prompt: Prompt,
    body: SamplingFields,
    max_tokens: int | None,
) -> SamplingParams:
    """`sampling_params` for a request body with temperature, top_p, stop and seed."""
    return sampling_params(
        state,
        engine,
        prompt,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )


async def admit(state: ServiceState) -> Lease:
    try:
        return await state.limiter.acquire()
    except Busy as exc:
        metrics.REJECTED.inc()
        raise busy(exc.retry_after) from None


async def _watch_disconnect(
    request: Request, cancel: Cancellation, task: asyncio.Task[Any]
) -> None:
    # The body is already read, so the next ASGI message is the client hanging up.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.cancel()
            task.cancel()
            return


async def _noting(
    chunks: AsyncIterator[GenerationChunk], recorder: GenerationRecorder
) -> AsyncIterator[GenerationChunk]:
    async for chunk in chunks:
        recorder.piece(chunk)
        yield chunk


async def generate(
    request: Request, engine: Engine, prompt: Prompt, params: SamplingParams, lease: Lease
) -> Completion:
    """Non-streaming generation that stops as soon as the client disconnects."""
    cancel = Cancellation()
    recorder = GenerationRecorder(request, engine, prompt)  # usage ledger
    async with lease:
        task = asyncio.ensure_future(
            collect(_noting(engine.stream(prompt, params, cancel), recorder))
        )
        watcher = asyncio.ensure_future(_watch_disconnect(request, cancel, task))
        try:
            result = await task
        except asyncio.CancelledError:
            recorder.finish("cancelled")
            raise
        except (APIError, EngineHTTPError):
            recorder.finish("error")
            raise  # EngineHTTPError: an upstream server's answer, passed on as it is
        except EngineUnavailable as exc:
            recorder.finish("error")
            log.warning("generation_engine_unavailable", error=str(exc))
            raise engine_unavailable(str(exc)) from None
        except Exception:
            recorder.finish("error")
            # Answered here (not by the last-resort handler) so the connection stays usable.
            log.exception("generation_failed")
            raise APIError(
                500, "The server had an error while generating.", code="engine_error"
            ) from None
        finally:
            watcher.cancel()
            cancel.cancel()
        recorder.finish("ok", result)
        return result


def _event(model: BaseModel) -> dict[str, str]:
    return {"data": model.model_dump_json()}


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How one endpoint turns engine chunks into its OpenAI chunk objects."""

    first: Callable[[], BaseModel] | None
    delta: Callable[[str], BaseModel]
    final: Callable[[GenerationChunk], BaseModel]
    usage: Callable[[GenerationChunk], BaseModel] | None


async def _sse_events(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    lease: Lease,
    fmt: StreamFormat,
    recorder: GenerationRecorder | None = None,
) -> AsyncIterator[dict[str, str]]:
    cancel = Cancellation()
    last: GenerationChunk | None = None
    status: Literal["ok", "error", "cancelled"] = "cancelled"  # unless it runs to the end
    try:
        if fmt.first is not None:
            yield _event(fmt.first())
        async for chunk in engine.stream(prompt, params, cancel):
            last = chunk
            if recorder is not None:
                recorder.piece(chunk)
            if chunk.text:
                yield _event(fmt.delta(chunk.text))
        assert last is not None and last.finish_reason is not None
        status = "ok"
        yield _event(fmt.final(last))
        if fmt.usage is not None:
            yield _event(fmt.usage(last))
        yield {"data": "[DONE]"}
    except asyncio.CancelledError:
        raise
    except EngineUnavailable as exc:
        status = "error"
        log.warning("stream_engine_unavailable", error=str(exc))
        yield {"data": json.dumps(engine_unavailable(str(exc)).body())}
    except Exception:
        status = "error"
        log.exception("stream_failed")
        # Headers are gone already: the error travels as an SSE event the SDKs understand.
        yield {
            "data": json.dumps(
                error_body("The server had an error while generating.", "server_error")
            )
        }
    finally:
        # Client gone or stream over: stop the engine and free the slot at once.
        cancel.cancel()
        lease.release()
        if recorder is not None:
            recorder.finish(status, last)


def sse_response(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    lease: Lease,
    fmt: StreamFormat,
    request: Request | None = None,
) -> EventSourceResponse:
    recorder = GenerationRecorder(request, engine, prompt) if request is not None else None
    return EventSourceResponse(
        _sse_events(engine, prompt, params, lease, fmt, recorder),
        ping=15,
        # Also released by the generator; this covers a stream that never got to start.
        background=BackgroundTask(lease.release),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
