"""The engine process's direct-stream writer and its sender thread (engines/llama_cpp/direct.py) on
a real socket pair: events in order and in HTTP/1.1 chunked framing, a slow reader never blocks
the scheduler and loses nothing, a client that hung up cancels its generation, and a stream's
report comes only after its text is written."""

from __future__ import annotations

import json
import queue
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from genai_service.engines.base import Cancellation
from genai_service.engines.llama_cpp.direct import DirectSender, DirectWriter, frame

HEAD = b'data: {"choices":[{"delta":{"content":'
TAIL = b"}}]}\n\n"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, client = socket.socketpair()
    ours.setblocking(False)  # as uvicorn's are
    yield ours, client
    ours.close()
    client.close()


def write(writer: DirectWriter, text: str) -> None:
    """One event framed and written at once, as the sender thread does."""
    writer.add(text)
    writer.retry()


def unchunk(data: bytes) -> list[bytes]:
    """The chunks of an HTTP/1.1 chunked body (without its end)."""
    chunks = []
    while data:
        size, rest = data.split(b"\r\n", 1)
        n = int(size, 16)
        assert rest[n : n + 2] == b"\r\n"
        chunks.append(rest[:n])
        data = rest[n + 2 :]
    return chunks


def texts(data: bytes) -> list[str]:
    out = []
    for event in unchunk(data):
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        out.append(json.loads(event[6:])["choices"][0]["delta"]["content"])
    return out


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = bytearray()
    while True:
        try:
            part = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(data)
        if not part:
            return bytes(data)
        data += part


def test_events_are_chunked_json_with_the_text_escaped(pair: tuple[socket.socket, ...]) -> None:
    ours, client = pair
    writer = DirectWriter(ours.detach(), HEAD, TAIL, True, Cancellation())
    pieces = ["Hello", ' "quoted"', "\nnew line", " é 🐉", "\\"]
    for piece in pieces:
        write(writer, piece)
    report = writer.report()
    assert texts(read_all(client)) == pieces
    assert report.unsent == b"" and report.text == "".join(pieces)
    assert report.first_at is not None and len(report.gaps) == len(pieces) - 1
    assert frame(HEAD, TAIL, "x", False) == HEAD + b'"x"' + TAIL


def test_a_slow_reader_blocks_nothing_and_loses_nothing(pair: tuple[socket.socket, ...]) -> None:
    ours, client = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer = DirectWriter(ours.detach(), HEAD, TAIL, True, Cancellation())
    pieces = [f" token{i}" for i in range(3000)]  # far more than both buffers hold
    received = bytearray()
    for i, piece in enumerate(pieces):
        write(writer, piece)  # never blocks: what the socket refuses waits in the writer
        if i == 1500:
            assert writer.pending
            received += read_all(client)  # the client catches up a little
            writer.retry()  # as the sender thread does every RETRY_S
    report = writer.report()  # one last try, then the socket goes back to the API process
    received += read_all(client)
    assert report.unsent  # the API process writes this, with its own flow control
    assert texts(bytes(received) + report.unsent) == pieces


def test_a_client_that_hung_up_cancels_its_generation(pair: tuple[socket.socket, ...]) -> None:
    ours, client = pair
    cancel = Cancellation()
    writer = DirectWriter(ours.detach(), HEAD, TAIL, True, cancel)
    write(writer, "first")
    client.close()
    write(writer, "second")  # EPIPE or ECONNRESET: no exception, the generation stops
    if not cancel.cancelled:
        write(writer, "third")  # the first write after a close may still be accepted
    assert cancel.cancelled
    report = writer.report()
    assert report.text.startswith("firstsecond") and report.unsent == b""


def test_the_sender_thread_writes_in_order_then_reports(pair: tuple[socket.socket, ...]) -> None:
    ours, client = pair
    delivered: queue.SimpleQueue[list[tuple[int, Any]]] = queue.SimpleQueue()
    sender = DirectSender(delivered.put)
    writer = DirectWriter(ours.detach(), HEAD, TAIL, True, Cancellation())
    pieces = [f" token{i}" for i in range(50)]
    for piece in pieces:
        sender.text(writer, piece)  # returns at once; the sender thread writes
    sender.end(7, writer, [(7, "last")])
    (req_id, report), *after = delivered.get(timeout=30)  # once the text is written
    sender.close()
    assert req_id == 7 and after == [(7, "last")]
    assert texts(read_all(client)) == pieces
    assert report.unsent == b"" and report.text == "".join(pieces)


def test_the_sender_retries_a_slow_reader_and_returns_the_rest(
    pair: tuple[socket.socket, ...],
) -> None:
    ours, client = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    delivered: queue.SimpleQueue[list[tuple[int, Any]]] = queue.SimpleQueue()
    sender = DirectSender(delivered.put)
    writer = DirectWriter(ours.detach(), HEAD, TAIL, True, Cancellation())
    pieces = [f" token{i}" for i in range(3000)]  # far more than both buffers hold
    for piece in pieces:
        sender.text(writer, piece)
    client.settimeout(30)
    received = bytearray(client.recv(1 << 16))  # the sender wrote what fit, then waits
    received += client.recv(1 << 16)  # and writes more once there is room (its retry)
    sender.end(1, writer, [])
    ((_, report),) = delivered.get(timeout=30)
    sender.close()
    received += read_all(client)
    assert report.unsent  # the API process writes this, with its own flow control
    assert texts(bytes(received) + report.unsent) == pieces
