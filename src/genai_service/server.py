"""uvicorn with a drain: SIGTERM (or Ctrl-C) first drains the app, then stops the server.

Plain uvicorn closes its listening socket on the first signal, so a load balancer that has not
yet noticed gets refused connections, and readiness cannot answer 503. Here the first signal
starts `Shutdown.drain()` (serving/shutdown.py) while the server keeps listening; the server
stops once the drain is over. A second signal ends the running generations and stops it
at once.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

from genai_service.serving.shutdown import Shutdown


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        super().__init__(config)
        self.drain_state = shutdown  # not `shutdown`: a method of uvicorn.Server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._tasks: set[asyncio.Task[None]] = set()  # keeps the drain task referenced

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

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
