"""Admission control (429 when busy) and cancellation when a client disconnects."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer, run_server, wait_for

LONG = [{"role": "user", "content": "Write a very long story about the history of the world."}]


@pytest.fixture(scope="module")
def tight() -> Iterator[RunningServer]:
    """One slot and one queue place."""
    with run_server(max_concurrent_generations=1, max_queue=1, queue_timeout=30) as running:
        yield running


def test_busy_server_answers_429_with_retry_after(tight: RunningServer) -> None:
    client = tight.openai()
    engine = tight.state.find(MODEL_ID)
    assert engine is not None
    holder = client.chat.completions.create(
        model=MODEL_ID, messages=LONG, max_tokens=1500, temperature=0, stream=True
    )
    next(iter(holder))  # the slot is now held by a running generation
    queued_result: list[object] = []
    queued = threading.Thread(
        target=lambda: queued_result.append(
            client.chat.completions.create(model=MODEL_ID, messages=LONG, max_tokens=2)
        )
    )
    queued.start()
    assert wait_for(lambda: tight.state.limiter.waiting == 1)

    with tight.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": LONG, "max_tokens": 2},
        )
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "server_busy"
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)

    holder.close()  # the client goes away: its slot passes to the queued request
    queued.join(timeout=60)
    assert queued_result, "queued request did not complete"
    assert tight.state.limiter.active == 0


def test_disconnect_mid_stream_stops_generation(tight: RunningServer) -> None:
    engine = tight.state.find(MODEL_ID)
    assert engine is not None
    body = {
        "model": MODEL_ID,
        "messages": LONG,
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=tight.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data:") for line in received)
            assert engine.active == 1 and tight.state.limiter.active == 1
    # The connection is closed: slot and engine are free long before 1500 tokens could be made.
    assert wait_for(lambda: tight.state.limiter.active == 0, 5)
    assert wait_for(lambda: engine.active == 0, 5)
    reply = tight.openai().chat.completions.create(model=MODEL_ID, messages=LONG, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_disconnect_during_non_streaming_request_stops_generation(tight: RunningServer) -> None:
    engine = tight.state.find(MODEL_ID)
    assert engine is not None
    body = {"model": MODEL_ID, "messages": LONG, "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tight.base_url}/v1/chat/completions", json=body, timeout=1.0)
    assert wait_for(lambda: engine.active == 0, 5)
    assert wait_for(lambda: tight.state.limiter.active == 0, 5)
