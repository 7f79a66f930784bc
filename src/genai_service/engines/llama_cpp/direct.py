"""The engine process's side of a direct stream (`engines.base.DirectStream`): one stream's text
events written straight to its client's socket, by one sender thread (`DirectSender`).

The sender thread, not the scheduler thread, writes: a send on a loopback or local TCP socket
runs the receiver's side of the stack too (60-100 µs of kernel time per token, measured), which
on the scheduler thread would add to every step; on its own thread it overlaps the next
`llama_decode`, which releases the GIL (llama-server writes from its HTTP threads too).

Every write is non-blocking (`MSG_DONTWAIT`): what a slow client's full socket buffer refuses
waits here and is retried every `RETRY_S`, so a slow reader never stalls the batch; what is
still waiting at the end goes back to the API process in the report, which writes it with the
server's own flow control. A client that is gone (EPIPE, ECONNRESET) cancels its generation.
The socket is closed here before the report is sent, so the API process writes again only once
nothing else can.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from genai_service.engines.base import Cancellation
from genai_service.engines.threads import name_os_thread

# Non-blocking whatever the socket's own mode; no SIGPIPE (Linux; Python ignores it anyway).
_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)
RETRY_S = 0.01  # how often the sender retries bytes a full socket refused (about one step)


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

    def add(self, text: str) -> None:
        """Frame one event behind what waits (written by the next `retry`)."""
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        else:
            self.gaps.append(now - self.last_at)
        self.last_at = now
        self.parts.append(text)
        if self._sock is not None:  # else the client is gone; the generation stops soon
            self.pending += frame(self.head, self.tail, text, self.chunked)

    def retry(self) -> None:
        """Write what waits (what the socket refused before too)."""
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


Deliver = Callable[[list[tuple[int, Any]]], None]


class DirectSender:
    """The thread that writes every direct stream: `text` and `end` queue work for it and return.

    `end(req_id, writer, after)`: once the stream's text is written (or refused), the socket is
    closed and `deliver([(req_id, report), *after])` tells the API process, in that order.
    """

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._queue: queue.SimpleQueue[tuple[DirectWriter, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="direct-sender", daemon=True)
        self._thread.start()

    def text(self, writer: DirectWriter, text: str) -> None:
        self._queue.put((writer, text))

    def end(self, req_id: int, writer: DirectWriter, after: list[tuple[int, Any]]) -> None:
        self._queue.put((writer, (req_id, after)))

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        name_os_thread("direct-sender")
        waiting: set[DirectWriter] = set()  # bytes a full socket refused
        get = self._queue.get
        while True:
            try:
                item = get(timeout=RETRY_S) if waiting else get()
            except queue.Empty:
                item = ...  # time to retry
            # Everything queued so far: one write per stream, however many events it has.
            touched: set[DirectWriter] = set()
            ended: list[tuple[int, DirectWriter, list[tuple[int, Any]]]] = []
            while item is not None:
                if item is not ...:
                    writer, work = item
                    if work.__class__ is str:
                        writer.add(work)
                        touched.add(writer)
                    else:
                        ended.append((work[0], writer, work[1]))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            active = touched | waiting
            for writer in active:
                writer.retry()
            waiting = {w for w in active if w.pending}
            for req_id, writer, after in ended:
                waiting.discard(writer)
                try:
                    self._deliver([(req_id, writer.report()), *after])
                except OSError:  # the API process is gone; this process stops next
                    return
            if item is None:
                return
