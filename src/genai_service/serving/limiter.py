"""Admission control: a fixed number of generation slots and a bounded wait queue.

Past the queue (or after waiting `timeout` seconds) a request is refused at once with
`Busy`, which the API turns into 429 with `Retry-After`; waiting forever helps nobody.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class Busy(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"busy; retry after {retry_after}s")
        self.retry_after = retry_after


class Lease:
    """One held slot; `release()` is idempotent so every exit path may call it."""

    def __init__(self, limiter: GenerationLimiter) -> None:
        self._limiter: GenerationLimiter | None = limiter

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class GenerationLimiter:
    """`slots` generations at once, then a FIFO of at most `max_queue` waiters.

    A released slot passes straight to the oldest waiter (it leaves the queue and takes the slot
    in one step), so `active` never exceeds `slots`, `waiting` never exceeds `max_queue`, and no
    newcomer overtakes a waiter. Every decision is made before the first await, so a burst of
    simultaneous calls cannot slip past the bounds.
    """

    def __init__(self, slots: int, max_queue: int, timeout: float) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.timeout = timeout
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.timeout / 10))

    async def acquire(self) -> Lease:
        if self.active < self.slots and not self._waiters:
            self.active += 1
            return Lease(self)
        if len(self._waiters) >= self.max_queue:
            raise Busy(self._retry_after())
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await asyncio.wait_for(granted, self.timeout)
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._release()  # handed a slot just as it gave up: pass the slot on
            elif granted in self._waiters:
                self._waiters.remove(granted)
            if isinstance(exc, TimeoutError):
                raise Busy(self._retry_after()) from None
            raise
        return Lease(self)

    def _release(self) -> None:
        while self._waiters:
            granted = self._waiters.popleft()
            if not granted.done():
                granted.set_result(None)  # the slot moves on; `active` stays the same
                return
        self.active -= 1
