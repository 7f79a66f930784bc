"""The bridge between a blocking generation loop on a worker thread and the event loop.

Engines produce chunks on their own thread; `stream_from_worker` hands them to the awaiting
coroutine through an asyncio queue, re-raises a worker's exception there, and cancels the work
when the consumer stops early (a client that went away).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from genai_service.engines.base import Cancellation, GenerationChunk, Prompt, SamplingParams

Emit = Callable[[GenerationChunk | BaseException], None]


class _Inbox:
    """Chunks from worker threads to one event loop, with one wake-up per burst.

    A batch scheduler emits the next token of every stream in one step; waking the loop once
    per token (`call_soon_threadsafe`, a write to its self-pipe each) costs more than the
    hand-over itself. Items queue here and the first of a burst schedules the one drain. On
    the loop's own thread (the llama.cpp engine process's pipe is read there) an item goes
    straight to its queue, unless items from other threads wait before it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # created on the loop (stream_from_worker)
        self._items: collections.deque[tuple[asyncio.Queue[Any], Any]] = collections.deque()
        self._scheduled = False

    def put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        if not self._items and threading.get_ident() == self._loop_thread:
            queue.put_nowait(item)
            return
        self._items.append((queue, item))  # deque.append is atomic: safe from any thread
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Cleared first: an item appended after this line schedules another drain.
        self._scheduled = False
        items = self._items
        while items:
            queue, item = items.popleft()
            queue.put_nowait(item)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


async def stream_from_worker(
    start: Callable[[Emit], asyncio.Future[Any] | None],
    cancel: Cancellation,
    on_close: Callable[[], None] | None = None,
) -> AsyncIterator[GenerationChunk]:
    """`start(emit)` begins the work (on an executor or a scheduler) and returns its future;
    `on_close` runs once the stream ends, however it ends."""
    inbox = _inbox(asyncio.get_running_loop())
    queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

    def emit(item: GenerationChunk | BaseException) -> None:
        inbox.put(queue, item)

    try:
        future = start(emit)
    except BaseException:
        if on_close is not None:
            on_close()
        raise
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
        if on_close is not None:
            on_close()


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
