"""Graceful shutdown: what the service does between SIGTERM and its exit.

1. `draining`: readiness answers 503 and new requests get 503 with Retry-After (the
   `DrainGate` middleware), while the server still listens: a load balancer that has not yet
   seen the readiness change gets a clear "go elsewhere", not a refused connection;
2. requests already in flight (streams included) run to their end, up to `timeout`
   (SHUTDOWN_DRAIN_SECONDS, alias SHUTDOWN_TIMEOUT);
3. past it, `halted` is set: each generation still running ends at its next token with a
   `server_shutting_down` error (an SSE error event on a stream, a 503 otherwise);
4. the server then stops (cli.py); the app's lifespan closes the engines and flushes the usage
   ledger before the process exits 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# After the timeout, how long the cut generations get to send their error event and close.
HALT_GRACE_SECONDS = 5.0


class Shutdown:
    """The drain's state: shared by the middleware, readiness and every generation."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.draining = False
        self.halted = False
        # Called at the timeout: generations that see no token of their own (a direct stream,
        # written by the engine process) are stopped through these.
        self.on_halt: set[Callable[[], None]] = set()
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def _until_idle(self, seconds: float) -> bool:
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def drain(self) -> None:
        """Stop admitting, wait for the requests in flight, cut what is left at the timeout."""
        started = time.monotonic()
        self.draining = True
        log.info("shutdown_draining", inflight=self.inflight, timeout_s=self.timeout)
        if not await self._until_idle(self.timeout):
            self.halted = True
            for stop in list(self.on_halt):
                stop()
            log.warning("shutdown_timeout", cut=self.inflight, timeout_s=self.timeout)
            await self._until_idle(HALT_GRACE_SECONDS)
        log.info("shutdown_drained", seconds=round(time.monotonic() - started, 2))
