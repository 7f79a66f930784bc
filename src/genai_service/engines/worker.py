"""The bridge between a blocking generation loop on a worker thread and the event loop.

Engines produce chunks on their own thread; `stream_from_worker` hands them to the awaiting
coroutine through an asyncio queue, re-raises a worker's exception there, and cancels the work
when the consumer stops early (a client that went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from genai_service.engines.base import Cancellation, GenerationChunk, Prompt, SamplingParams

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


class ExecutorEngine:
    """Base for engines whose generation loop runs on one dedicated worker thread.

    Subclasses implement `_decode`: sample until done, emit text pieces, return the final chunk
    (or None when cancelled). Counting, error hand-over and the bridge live here, once.
    """

    active: int = 0
    _executor: ThreadPoolExecutor

    def _decode(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation, emit: Emit
    ) -> GenerationChunk | None:
        raise NotImplementedError

    def _run(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation, emit: Emit
    ) -> None:
        self.active += 1
        try:
            final: GenerationChunk | BaseException | None = self._decode(
                prompt, params, cancel, emit
            )
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises
            final = exc
        finally:
            # Counted down before the last chunk goes out, so a consumer that has it sees 0.
            self.active -= 1
        if final is not None:
            emit(final)

    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        cancel = cancel or Cancellation()
        loop = asyncio.get_running_loop()
        work = functools.partial(self._run, prompt, params, cancel)
        async for chunk in stream_from_worker(
            lambda emit: loop.run_in_executor(self._executor, work, emit), cancel
        ):
            yield chunk


def _consume_exception(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()
