"""Server-Sent Events for every streaming route: one event loop over a `Generation`.

A route says how its API shapes the pieces (`StreamFormat`); the generation itself (limits,
cancellation, usage, metrics, on_finish) belongs to `serving.generation`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]

import structlog
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.types import Message, Send

from genai_service import metrics
from genai_service.api import connection
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
    # bytes: a whole pre-encoded `data: ...\n\n` event (the per-token fast path, see `template`).
    delta: Callable[[GenerationChunk, int], BaseModel | bytes | None]
    # A choice's closing events, from its last chunk and its finished generation (which holds
    # what on_finish returned, e.g. a stored turn).
    final: Callable[[GenerationChunk, Generation, int], Sequence[BaseModel]]
    first: Callable[[int], Sequence[BaseModel]] | None = None  # a choice's opening events
    # Once, after every choice finished (e.g. the usage chunk), from their last chunks.
    end: Callable[[list[GenerationChunk]], Sequence[BaseModel]] | None = None
    # The text event's template when every text chunk is one plain event (one choice, no
    # logprobs, no tool calls): the engine process may then write them itself (direct stream).
    direct: Template | None = None


def _event(model: BaseModel) -> bytes:
    # Compact JSON has no newline, so it is one `data:` line: no SSE re-encoding needed.
    return b"data: " + model.__pydantic_serializer__.to_json(model) + b"\n\n"


def _data(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


MARKER = "@@genai-sse-text@@"  # where a template's text goes; plain ASCII, escaped as is


class Template:
    """text -> the SSE event of `model` (built with `MARKER` as one of its strings) with that
    text in the marker's place, as bytes.

    The model is serialised once; each token then costs one string escape and a join instead
    of a pydantic model and its serialisation (the hot path of a stream). The escape is the
    JSON encoder's own, the same bytes pydantic writes (non-ASCII as UTF-8); the engine
    process writes a direct stream's events from the same head and tail.
    """

    __slots__ = ("head", "tail")

    def __init__(self, model: BaseModel) -> None:
        self.head, self.tail = _event(model).split(json.dumps(MARKER).encode())

    def __call__(self, text: str) -> bytes:
        return self.head + encode_basestring(text).encode() + self.tail


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


class _Lent:
    """Shared by a stream's events and its response: the socket lent to the engine, if any
    (the response sends no keep-alive ping meanwhile)."""

    __slots__ = ("hand_off",)

    def __init__(self) -> None:
        self.hand_off: connection.HandOff | None = None

    @property
    def active(self) -> bool:
        return self.hand_off is not None and self.hand_off.active

    def take_back(self) -> None:
        """Before the API process writes again: the engine has reported (or died)."""
        if self.hand_off is not None:
            self.hand_off.take_back()


def _lend(generations: list[Generation], fmt: StreamFormat, lent: _Lent) -> None:
    """Hand the socket to the engine for this stream where that can be done."""
    generation = generations[0]
    if (
        fmt.direct is None
        or len(generations) > 1
        or generation.request is None
        or "direct_stream" not in getattr(generation.engine, "features", ())
    ):
        return
    hand_off = connection.hand_off(generation.request.scope, fmt.direct.head, fmt.direct.tail)
    if hand_off is not None:
        generation.direct = hand_off.direct
        lent.hand_off = hand_off
        metrics.DIRECT_STREAMS.labels(generation.engine.info.id).inc()


async def sse_events(
    generations: list[Generation],
    fmt: StreamFormat,
    on_close: Callable[[], None] | None = None,
    lent: _Lent | None = None,
) -> AsyncIterator[bytes]:
    lent = lent or _Lent()
    try:
        if fmt.first is not None:
            for index in range(len(generations)):
                for model in fmt.first(index):
                    yield _event(model)
        # Resumed once the opening events were written: the socket can be lent now.
        _lend(generations, fmt, lent)
        lasts: dict[int, GenerationChunk] = {}
        async for index, chunk in _merged(generations):
            lent.take_back()  # a direct stream's one chunk comes after the engine's report
            if chunk.text or chunk.logprobs:
                event = fmt.delta(chunk, index)
                if event.__class__ is bytes:
                    yield event  # type: ignore[misc]
                elif event is not None:
                    yield _event(event)  # type: ignore[arg-type]
            if chunk.finish_reason is not None:
                lasts[index] = chunk
                for model in fmt.final(chunk, generations[index], index):
                    yield _event(model)
        if fmt.end is not None:
            for model in fmt.end([lasts[i] for i in range(len(generations))]):
                yield _event(model)
        yield _DONE
    except asyncio.CancelledError:
        raise
    except APIError as exc:
        lent.take_back()
        yield _data(json.dumps(exc.body()))
    except EngineUnavailable as exc:
        # The engine process crashed mid-stream: say so; nothing was stored, a retry will work.
        log.warning("stream_engine_unavailable", error=str(exc))
        lent.take_back()
        yield _data(json.dumps(engine_unavailable(str(exc)).body()))
    except Exception:
        log.exception("stream_failed")
        lent.take_back()
        # Headers are gone already: the error travels as an SSE event the SDKs understand.
        yield _data(
            json.dumps(error_body("The server had an error while generating.", "server_error"))
        )
    finally:
        for generation in generations:  # client gone or stream over: stop, free the slots
            generation.close()
        if on_close is not None:
            on_close()


class _EventSource(EventSourceResponse):
    """sse-starlette wraps every send in an anyio cancel scope for its `send_timeout` (~4 µs
    an event); with no timeout set, as here, the scope does nothing, so it is skipped. While
    the engine writes to the socket (`lent`), the only sends are keep-alive pings: dropped."""

    lent: _Lent

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.lent.active:
            return
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True  # what the base class records for its cleanup
            raise


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

    lent = _Lent()
    response = _EventSource(
        sse_events(choices, fmt, on_close, lent),
        ping=15,
        # On SIGTERM (a rolling update, a scale-down) running streams finish, up to this long,
        # instead of being cut at once; uvicorn stops taking new connections meanwhile.
        shutdown_grace_period=choices[0].drain_seconds,
        background=BackgroundTask(cleanup),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.lent = lent
    return response
