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


def usage_of(*results: GenerationChunk | Completion) -> Usage:
    """Usage of one choice, or of n choices of one prompt (the prompt counted once)."""
    prompt = results[0].prompt_tokens
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How one endpoint turns the chunks of its choices (index 0 to n-1) into event objects."""

    # A chunk with text (and maybe logprobs) -> its event, or None to send nothing for it now.
    delta: Callable[[GenerationChunk, int], BaseModel | None]
    # A choice's closing events, from its last chunk and its finished generation (which holds
    # what on_finish returned, e.g. a stored turn).
    final: Callable[[GenerationChunk, Generation, int], Sequence[BaseModel]]
    first: Callable[[int], Sequence[BaseModel]] | None = None  # a choice's opening events
    # Once, after every choice finished (e.g. the usage chunk), from their last chunks.
    end: Callable[[list[GenerationChunk]], Sequence[BaseModel]] | None = None


def _event(model: BaseModel) -> dict[str, str]:
    return {"data": model.model_dump_json()}


async def _merged(generations: list[Generation]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """The chunks of every choice as they come, each with its choice index."""
    if len(generations) == 1:
        async for chunk in generations[0].stream():
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for chunk in generation.stream():
                queue.put_nowait((index, chunk))
        except Exception as exc:
            queue.put_nowait((index, exc))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(generations)
        while running:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield index, item
            if item.finish_reason is not None:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()


async def sse_events(
    generations: list[Generation], fmt: StreamFormat
) -> AsyncIterator[dict[str, str]]:
    try:
        if fmt.first is not None:
            for index in range(len(generations)):
                for model in fmt.first(index):
                    yield _event(model)
        lasts: dict[int, GenerationChunk] = {}
        async for index, chunk in _merged(generations):
            if chunk.text or chunk.logprobs:
                event = fmt.delta(chunk, index)
                if event is not None:
                    yield _event(event)
            if chunk.finish_reason is not None:
                lasts[index] = chunk
                for model in fmt.final(chunk, generations[index], index):
                    yield _event(model)
        if fmt.end is not None:
            for model in fmt.end([lasts[i] for i in range(len(generations))]):
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
        for generation in generations:  # client gone or stream over: stop, free the slots
            generation.close()


def sse_response(
    generations: Generation | list[Generation],
    fmt: StreamFormat,
    on_close: Callable[[], None] | None = None,
) -> EventSourceResponse:
    choices = generations if isinstance(generations, list) else [generations]

    def cleanup() -> None:
        # Also done by the generator; this covers a stream that never got to start.
        for generation in choices:
            generation.close()
        if on_close is not None:
            on_close()

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in sse_events(choices, fmt):
                yield event
        finally:
            if on_close is not None:
                on_close()

    return EventSourceResponse(
        events(),
        ping=15,
        # On SIGTERM (a rolling update, a scale-down) running streams finish, up to this long,
        # instead of being cut at once; uvicorn stops taking new connections meanwhile.
        shutdown_grace_period=choices[0].drain_seconds,
        background=BackgroundTask(cleanup),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
