"""The limiter's bounds hold under any burst: at most `slots` run and `max_queue` wait.

300 simultaneous acquires while leases come and go, then 48 concurrent HTTP streams against
the real model with MAX_CONCURRENT_GENERATIONS=2 and MAX_QUEUE=2: every refused request is
a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator

import httpx
import pytest

from genai_service.serving.limiter import Busy, GenerationLimiter
from tests.conftest import MODEL_ID, RunningServer, run_server


async def _churn(strict: bool) -> None:
    limiter = GenerationLimiter(3, 5, 2)
    peak = {"active": 0, "waiting": 0, "total": 0}
    outcomes = {"served": 0, "busy": 0}
    rng = random.Random(14)

    def observe() -> None:
        peak["active"] = max(peak["active"], limiter.active)
        peak["waiting"] = max(peak["waiting"], limiter.waiting)
        peak["total"] = max(peak["total"], limiter.active + limiter.waiting)

    async def one() -> None:
        await asyncio.sleep(rng.random() * 0.01)  # arrivals spread over a few ms
        try:
            lease = await limiter.acquire()
        except Busy as busy:
            assert busy.retry_after >= 1
            outcomes["busy"] += 1
            return
        observe()
        async with lease:
            await asyncio.sleep(rng.random() * 0.002)
            observe()
        outcomes["served"] += 1

    async def watch() -> None:
        while True:
            observe()
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one() for _ in range(300)))
    watcher.cancel()
    assert outcomes["served"] + outcomes["busy"] == 300
    assert outcomes["busy"] > 0 and outcomes["served"] >= 8
    assert peak["active"] == 3 and peak["waiting"] > 0 and peak["total"] <= 3 + 5
    if strict:
        assert peak["waiting"] <= 5
    assert (limiter.active, limiter.waiting) == (0, 0)


async def test_300_simultaneous_acquires_with_churn() -> None:
    """At most 3 run, and running plus waiting never passes 3 + 5; every refusal has a
    retry-after."""
    await _churn(strict=False)


async def test_waiting_never_exceeds_max_queue_under_churn() -> None:
    await _churn(strict=True)


async def test_300_acquires_at_the_same_instant() -> None:
    limiter = GenerationLimiter(2, 2, 5)
    calls = [asyncio.ensure_future(limiter.acquire()) for _ in range(300)]
    await asyncio.sleep(0.05)
    refused = [c for c in calls if c.done() and isinstance(c.exception(), Busy)]
    assert len(refused) == 296 and (limiter.active, limiter.waiting) == (2, 2)
    while any(not c.done() for c in calls) or limiter.active:
        for call in calls:
            if call.done() and not call.exception():
                call.result().release()
        await asyncio.sleep(0.01)
    assert (limiter.active, limiter.waiting) == (0, 0)


@pytest.fixture(scope="module")
def two_and_two() -> Iterator[RunningServer]:
    with run_server(max_concurrent_generations=2, max_queue=2, queue_timeout=60) as running:
        yield running


def test_48_concurrent_streams_keep_the_bounds(two_and_two: RunningServer) -> None:
    limiter = two_and_two.state.limiter
    peak = {"active": 0, "total": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            active, waiting = limiter.active, limiter.waiting
            peak["active"] = max(peak["active"], active)
            peak["total"] = max(peak["total"], active + waiting)

    async def stream(http: httpx.AsyncClient) -> tuple[int, str | None]:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Count to ten."}],
            "max_tokens": 4,
            "stream": True,
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            await response.aread()
            return response.status_code, response.headers.get("retry-after")

    async def burst() -> list[tuple[int, str | None]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=two_and_two.base_url, timeout=120, limits=limits
        ) as http:
            return await asyncio.gather(*(stream(http) for _ in range(48)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = asyncio.run(burst())
    finally:
        stop.set()
        watcher.join()
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}
    assert 4 <= statuses.count(200) < 48
    assert all(int(retry) >= 1 for status, retry in results if status == 429 and retry)
    assert all(retry for status, retry in results if status == 429)
    # At most 2 run and at most 4 are admitted at once.
    assert peak["active"] <= 2 and peak["total"] <= 4
    assert (limiter.active, limiter.waiting) == (0, 0)
