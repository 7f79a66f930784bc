"""uvicorn with a drain: SIGTERM (or Ctrl-C) first drains the app, then stops the server.

Plain uvicorn closes its listening socket on the first signal, so a load balancer that has not
yet noticed gets refused connections, and readiness cannot answer 503. Here the first signal
starts `Shutdown.drain()` (serving/shutdown.py) while the server keeps listening; the server
stops once the drain is over. A second signal ends the running generations and stops it
at once.

uvicorn's own loop wakes ten times a second to look at `should_exit` (about 3 ms of CPU a
second on an idle server, each wake-up paying for cold caches); here it wakes once a second,
for the Date header, or as soon as `should_exit` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn

from genai_service.serving.shutdown import Shutdown


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        super().__init__(config)
        self.drain_state = shutdown  # not `shutdown`: a method of uvicorn.Server
        self._signalled = False
        self._tasks: set[asyncio.Task[None]] = set()  # keeps the drain task referenced

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        # Set by a signal handler, the drain, a lifespan failure or another thread: wake the
        # main loop now rather than at its next tick.
        self._should_exit = value
        if value and self._wake is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._wake.set)

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await super().serve(sockets)

    async def main_loop(self) -> None:
        assert self._wake is not None
        while not await self.on_tick(0):  # tick 0: the Date header and the request limit
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or not self.started or self._loop is None:
            # A second signal, or one before the server is up: uvicorn's own stop, and the
            # generations still running end now (with their error event).
            self.drain_state.halted = True
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        loop = self._loop

        def start() -> None:
            task = loop.create_task(self._drain_then_exit(sig, frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        # A signal handler runs between two bytecodes of the loop's thread: hand over to it.
        loop.call_soon_threadsafe(start)

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            await self.drain_state.drain()
        finally:
            super().handle_exit(sig, frame)
