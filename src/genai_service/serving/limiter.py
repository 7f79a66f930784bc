"""Admission control: a fixed number of generation slots and a bounded wait queue.

Past the queue (or after waiting `timeout` seconds) a request is refused at once with
`Busy`, which the API turns into 429 with `Retry-After`; waiting forever helps nobody.
"""

from __future__ import annotations

import asyncio
import math


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
    def __init__(self, slots: int, max_queue: int, timeout: float) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.timeout = timeout
        self.active = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(slots)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.timeout / 10))

    async def acquire(self) -> Lease:
        # Decided on our own counters, before the first await: the semaphore only learns of
        # waiters once they run, so a burst of simultaneous calls would all slip past it.
        if self.active + self.waiting >= self.slots + self.max_queue:
            raise Busy(self._retry_after())
        self.waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.timeout)
        except TimeoutError:
            raise Busy(self._retry_after()) from None
        finally:
            self.waiting -= 1
        self.active += 1
        return Lease(self)

    def _release(self) -> None:
        self.active -= 1
        self._semaphore.release()
