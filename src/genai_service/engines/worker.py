"""The bridge between a blocking generation loop on a worker thread and the event loop.

Engines produce chunks on their own thread; `stream_from_worker` hands them to the awaiting
coroutine through an asyncio queue, re-raises a worker's exception there, and cancels the work
when the consumer stops early (a client that went away).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from genai_service.engines.base import Cancellation, GenerationChunk

Emit = Callable[[GenerationChunk | BaseException], None]


async def stream_from_worker(
    start: Callable[[Emit], asyncio.Future[Any] | None], cancel: Cancellation
) -> AsyncIterator[GenerationChunk]:
    """`start(emit)` begins the work (on an executor or a scheduler) and returns its future."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

    def emit(item: GenerationChunk | BaseException) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    future = start(emit)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
    finally:
        # The consumer went away (client disconnect) or finished: stop the worker now.
        cancel.cancel()
        if future is not None:
            future.add_done_callback(_consume_exception)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()
