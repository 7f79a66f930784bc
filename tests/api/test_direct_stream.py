"""Direct streams (DIRECT_STREAM, on by default): the engine process writes a plain streamed
chat's tokens to the client's socket itself. Real server, real model, real sockets.

What the client sees must be the stream the API process would have sent, and what the service
records (usage, metrics) must not change. Hanging up and the drain's timeout are covered in
tests/api/test_usage.py and tests/api/test_shutdown.py.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL_ID, RunningServer

STORY = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]


def sample(http: httpx.Client, name: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels.get("model", MODEL_ID) == MODEL_ID:
                return s.value
    return 0.0


def test_the_engine_writes_the_stream_the_api_would_have_sent(
    server: RunningServer, client: openai.OpenAI
) -> None:
    body = {
        "model": MODEL_ID,
        "messages": STORY,
        "max_tokens": 60,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.http() as http:
        direct_before = sample(http, "genai_direct_streams_total")
        itl_before = sample(http, "genai_inter_token_latency_seconds_count")
        ttft_before = sample(http, "genai_time_to_first_token_seconds_count")
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert sample(http, "genai_direct_streams_total") == direct_before + 1

        assert data[-1] == "[DONE]"
        events = [json.loads(d) for d in data[:-1]]  # every event whole: nothing interleaved
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        ids = {e["id"] for e in events}
        assert len(ids) == 1 and all(e["model"] == MODEL_ID for e in events)
        texts = [e["choices"][0]["delta"]["content"] for e in events[1:-2]]
        assert all(texts) and len(texts) > 10  # one event per token, as without DIRECT_STREAM
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        usage = events[-1]["usage"]
        assert usage["completion_tokens"] == 60

        # The same reply as a plain (not streamed) completion: greedy, the same text.
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=STORY, max_tokens=60, temperature=0
        )
        assert "".join(texts) == reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.prompt_tokens == usage["prompt_tokens"]

        # The metrics the API process would have taken per token come from the engine's report.
        assert sample(http, "genai_time_to_first_token_seconds_count") == ttft_before + 2
        itl_now = sample(http, "genai_inter_token_latency_seconds_count")
        assert itl_now - itl_before >= len(texts) - 1


def test_streams_that_cannot_be_written_by_the_engine_still_stream(
    server: RunningServer, client: openai.OpenAI
) -> None:
    """Logprobs (per-token data the API process formats) go through the API process."""
    with server.http() as http:
        before = sample(http, "genai_direct_streams_total")
        stream = client.chat.completions.create(
            model=MODEL_ID,
            messages=STORY,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            stream=True,
        )
        chunks = list(stream)
        assert sum(1 for c in chunks if c.choices and c.choices[0].logprobs) >= 1
        assert sample(http, "genai_direct_streams_total") == before


def test_the_bytes_on_the_wire_are_one_well_formed_chunked_stream(server: RunningServer) -> None:
    """The engine frames its own HTTP/1.1 chunks: read raw from a client that reads nothing
    until the reply is done (through a small receive window), the response is one valid chunked
    body of whole events. (On loopback the server's socket buffer holds the whole reply; the
    writes a full buffer refuses are covered in tests/engines/test_direct.py.)"""
    body = json.dumps(
        {
            "model": MODEL_ID,
            "messages": STORY,
            "max_tokens": 150,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect: the window
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json"
            b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        # Nothing is read until the whole reply (150 tokens, ~50 kB of events) is made.
        engine = server.state.find(MODEL_ID)
        deadline = time.monotonic() + 60
        while engine.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.settimeout(60)
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    events = b"".join(unchunk(payload)).decode().split("\n\n")
    data = [e.removeprefix("data: ") for e in events if e]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    with server.http() as http:
        plain = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": STORY, "max_tokens": 150, "temperature": 0},
        ).json()
    assert text == plain["choices"][0]["message"]["content"]


def unchunk(data: bytes) -> list[bytes]:
    """The chunks of an HTTP/1.1 chunked body, up to its last (empty) chunk."""
    chunks = []
    while True:
        size, rest = data.split(b"\r\n", 1)
        n = int(size, 16)
        if n == 0:
            return chunks
        assert rest[n : n + 2] == b"\r\n"
        chunks.append(rest[:n])
        data = rest[n + 2 :]
