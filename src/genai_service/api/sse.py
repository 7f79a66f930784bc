"""Server-Sent Events for every streaming route: one event loop over a `Generation`.

A route says how its API shapes the pieces (`StreamFormat`); the generation itself (limits,
cancellation, usage, metrics, on_finish) belongs to `serving.generation`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import structlog
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from genai_service.api.errors import APIError, engine_unavailable, error_body
from genai_service.api.schemas import Usage
from genai_service.engines.base import Completion, EngineUnavailable, GenerationChunk
from genai_service.serving.generation import Generation

log = structlog.get_logger(__name__)


def usage_of(result: GenerationChunk | Completion) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How one endpoint turns generation chunks into its event objects."""

    # A chunk with text (and maybe logprobs) -> its event, or None to send nothing for it now.
    delta: Callable[[GenerationChunk], BaseModel | None]
    # The closing events, from the last chunk and the finished generation (e.g. its stored turn).
    final: Callable[[GenerationChunk, Generation], Sequence[BaseModel]]
    first: Callable[[], BaseModel] | None = None


def _event(model: BaseModel) -> dict[str, str]:
    return {"data": model.model_dump_json()}


async def sse_events(generation: Generation, fmt: StreamFormat) -> AsyncIterator[dict[str, str]]:
    try:
        if fmt.first is not None:
            yield _event(fmt.first())
        last: GenerationChunk | None = None
        async for chunk in generation.stream():
            if chunk.text or chunk.logprobs:
                event = fmt.delta(chunk)
                if event is not None:
                    yield _event(event)
            last = chunk
        assert last is not None and last.finish_reason is not None
        for model in fmt.final(last, generation):
            yield _event(model)
        yield {"data": "[DONE]"}
    except asyncio.CancelledError:
        raise
    except APIError as exc:
        yield {"data": json.dumps(exc.body())}
    except EngineUnavailable as exc:
        # The engine process crashed mid-stream: say so; nothing was stored, a retry will work.
        log.warning("stream_engine_unavailable", error=str(exc))
        yield {"data": json.dumps(engine_unavailable(str(exc)).body())}
    except Exception:
        log.exception("stream_failed")
        # Headers are gone already: the error travels as an SSE event the SDKs understand.
        yield {
            "data": json.dumps(
                error_body("The server had an error while generating.", "server_error")
            )
        }
    finally:
        generation.close()  # client gone or stream over: stop the engine, free the slot


def sse_response(
    generation: Generation, fmt: StreamFormat, on_close: Callable[[], None] | None = None
) -> EventSourceResponse:
    def cleanup() -> None:
        # Also done by the generator; this covers a stream that never got to start.
        generation.close()
        if on_close is not None:
            on_close()

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in sse_events(generation, fmt):
                yield event
        finally:
            if on_close is not None:
                on_close()

    return EventSourceResponse(
        events(),
        ping=15,
        background=BackgroundTask(cleanup),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
