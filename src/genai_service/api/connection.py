"""A streamed response's client socket, lent to the engine process (a direct stream, see
`engines.base.DirectStream`), and taken back when the engine is done with it.

uvicorn hands an app its connection only through the `send` callable of a request (a bound
method of its HTTP/1.1 protocol's request cycle); the app keeps that cycle in the scope
(`remember`, called by `app.ServiceApp`). Any other server, TLS, a test client or Ray Serve's
proxy finds none, and the stream goes through the API process as usual.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope, Send

from genai_service.engines.base import DirectStream

SCOPE_KEY = "genai.connection"


def remember(scope: Scope, send: Send) -> None:
    cycle = getattr(send, "__self__", None)
    if hasattr(cycle, "transport") and hasattr(cycle, "chunked_encoding"):
        scope[SCOPE_KEY] = cycle


class HandOff:
    """A socket lent to the engine. Until `take_back`, the API process writes nothing to it:
    two writers would interleave their bytes."""

    def __init__(self, transport: Any, direct: DirectStream) -> None:
        self.transport = transport
        self.direct = direct
        self.active = True

    def take_back(self) -> None:
        """After the engine's report (or its death): what it could not write goes first."""
        if not self.active:
            return
        self.active = False
        if self.direct.unsent and not self.transport.is_closing():
            self.transport.write(self.direct.unsent)


def hand_off(scope: Scope, head: bytes, tail: bytes) -> HandOff | None:
    """Lend the socket of this started response, or None where it cannot be lent."""
    cycle = scope.get(SCOPE_KEY)
    if (
        cycle is None
        or cycle.chunked_encoding is not True
        or not cycle.response_started
        or cycle.response_complete
        or cycle.disconnected
    ):
        return None
    transport = cycle.transport
    if (
        transport.is_closing()
        or transport.get_write_buffer_size()  # queued bytes would go out after the engine's
        or transport.get_extra_info("sslcontext") is not None  # the engine cannot encrypt
    ):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    return HandOff(transport, DirectStream(sock.fileno(), head, tail, chunked=True))
