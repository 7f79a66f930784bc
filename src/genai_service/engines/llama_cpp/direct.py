"""The engine process's side of a direct stream (`engines.base.DirectStream`): one stream's text
events written straight to its client's socket, from the scheduler thread.

Every write is non-blocking (`MSG_DONTWAIT`): what a slow client's full socket buffer refuses
waits here and is retried after each scheduler step, so a slow reader never stalls the batch;
what is still waiting at the end goes back to the API process in the report, which writes it
with the server's own flow control. A client that is gone (EPIPE, ECONNRESET) cancels its
generation. The socket is closed here before the report is sent, so the API process writes
again only once nothing else can.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]

from genai_service.engines.base import Cancellation

# Non-blocking whatever the socket's own mode; no SIGPIPE (Linux; Python ignores it anyway).
_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)


def frame(head: bytes, tail: bytes, text: str, chunked: bool) -> bytes:
    """The event for `text` (its JSON string between head and tail), chunk-framed if asked.

    The escape is the JSON encoder's own, as `api.sse.Template` uses: the same bytes pydantic
    writes (non-ASCII as UTF-8).
    """
    event = head + encode_basestring(text).encode() + tail
    if chunked:
        return b"%x\r\n%b\r\n" % (len(event), event)
    return event


@dataclass(frozen=True, slots=True)
class DirectReport:
    """Sent to the API process when a direct stream ends, before its last chunk or error."""

    unsent: bytes
    text: str
    first_at: float | None
    gaps: list[float]


class DirectWriter:
    """One direct stream: its socket, the bytes it refused so far and what was written."""

    __slots__ = (
        "_sock",
        "cancel",
        "chunked",
        "first_at",
        "gaps",
        "head",
        "last_at",
        "parts",
        "pending",
        "tail",
    )

    def __init__(
        self, fd: int, head: bytes, tail: bytes, chunked: bool, cancel: Cancellation
    ) -> None:
        self._sock: socket.socket | None = socket.socket(fileno=fd)
        self.head, self.tail, self.chunked = head, tail, chunked
        self.cancel = cancel
        self.pending = bytearray()
        self.parts: list[str] = []
        self.first_at: float | None = None
        self.last_at = 0.0
        self.gaps: list[float] = []

    def text(self, text: str) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        else:
            self.gaps.append(now - self.last_at)
        self.last_at = now
        self.parts.append(text)
        if self._sock is None:
            return  # the client is gone; the generation stops at the next step
        data = frame(self.head, self.tail, text, self.chunked)
        if self.pending:
            self.pending += data  # behind what is already waiting
            self.retry()
        else:
            self._send(data)

    def retry(self) -> None:
        """Write what the socket refused before (after each scheduler step)."""
        if self.pending and self._sock is not None:
            data = bytes(self.pending)
            self.pending.clear()
            self._send(data)

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            sent = self._sock.send(data, _FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError:  # EPIPE, ECONNRESET: the client hung up
            self.pending.clear()
            self.close()
            self.cancel.cancel()
            return
        if sent < len(data):
            self.pending += data[sent:]

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def report(self) -> DirectReport:
        """Close the socket (one last try for what waits) and say what the API must know."""
        self.retry()
        self.close()
        unsent = bytes(self.pending)
        self.pending.clear()
        return DirectReport(unsent, "".join(self.parts), self.first_at, self.gaps)
