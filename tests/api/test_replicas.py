"""Three replicas on one Postgres: 60 concurrent posts to one conversation, spread across them.

Real `genai-service serve` processes with the real model and a real Postgres: every turn is
stored exactly once, in order, each assistant turn right after its own user turn, and each
reply was built from every turn committed before it (storage/repository.py, ConversationLocks).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from genai_service.storage import migrate
from tests.conftest import free_port, wait_ready
from tests.postgres import run_async

REPLICAS = 3
POSTS = 60


@pytest.fixture
def replicas(pg_databases: Callable[[], str], tmp_path: Path) -> Iterator[list[str]]:
    url = pg_databases()
    run_async(migrate.upgrade_async(url))  # once, as `genai-service db upgrade` before a rollout
    servers: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(REPLICAS):
            port = free_port()
            env = os.environ | {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "DATABASE_URL": url,
                "DATA_DIR": str(tmp_path / f"replica{i}"),
                "N_THREADS": "1",
                "N_CTX": "2048",  # the whole conversation fits: prefix-cache hits, no dropping
                "N_PARALLEL": "1",
                "ENGINE_PROCESS": "false",  # one process per replica is enough here
                "EMBEDDING_MODEL": "",
                "LOG_LEVEL": "warning",
            }
            log = (tmp_path / f"replica{i}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "genai_service", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            servers.append((process, f"http://127.0.0.1:{port}"))
        for i, (process, base) in enumerate(servers):
            wait_ready(base, process, 180, tmp_path / f"replica{i}.log")
        yield [base for _, base in servers]
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _post(http: httpx.AsyncClient, base: str, conversation: str, i: int) -> dict[str, Any]:
    url = f"{base}/v1/conversations/{conversation}/messages"
    body = {"content": f"Note number {i}.", "max_tokens": 3, "temperature": 0.0}
    if i % 4 == 3:  # some streamed: the lock is then released when the stream ends
        async with http.stream("POST", url, json=body | {"stream": True}) as response:
            assert response.status_code == 200
            events = [line[6:] async for line in response.aiter_lines() if line[:6] == "data: "]
        assert events[-1] == "[DONE]"
        turn: dict[str, Any] = json.loads(events[-2])
        return turn
    response = await http.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def _all_messages(http: httpx.AsyncClient, base: str, conversation: str) -> list[Any]:
    messages: list[Any] = []
    params: dict[str, Any] = {"limit": 100, "order": "asc"}
    while True:
        page = (
            await http.get(f"{base}/v1/conversations/{conversation}/messages", params=params)
        ).json()
        messages.extend(page["data"])
        if not page["has_more"]:
            return messages
        params["after"] = page["data"][-1]["id"]


def test_concurrent_posts_across_replicas(replicas: list[str]) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[Any]]:
        async with httpx.AsyncClient(timeout=600) as http:
            created = await http.post(f"{replicas[0]}/v1/conversations", json={})
            conversation = created.json()["id"]
            turns = await asyncio.gather(
                *(_post(http, replicas[i % REPLICAS], conversation, i) for i in range(POSTS))
            )
            return list(turns), await _all_messages(http, replicas[1], conversation)

    started = time.monotonic()
    turns, stored = asyncio.run(scenario())
    print(f"{POSTS} posts across {REPLICAS} replicas: {time.monotonic() - started:.1f} s")

    # Every turn stored exactly once, in order: indexes 0..119, user then assistant.
    assert [m["index"] for m in stored] == list(range(2 * POSTS))
    assert [m["role"] for m in stored] == ["user", "assistant"] * POSTS
    assert sorted(m["content"] for m in stored[::2]) == sorted(
        f"Note number {i}." for i in range(POSTS)
    )
    by_id = {m["id"]: m for m in stored}
    for i, turn in enumerate(turns):
        user, reply = turn["messages"]
        # Each assistant turn right after its own user turn, as stored.
        assert by_id[user["id"]]["content"] == f"Note number {i}."
        assert by_id[reply["id"]]["index"] == by_id[user["id"]]["index"] + 1
        assert by_id[reply["id"]]["content"] == reply["content"]

    # Each reply saw every turn committed before it: while nothing had to be dropped to fit
    # the window, each prompt is the one before plus a whole turn (two replies built from the
    # same history would differ by a token or two, the length of their own message).
    ordered = sorted(turns, key=lambda t: t["messages"][0]["index"])
    whole = [t["usage"]["prompt_tokens"] for t in ordered if t["dropped_messages"] == 0]
    assert len(whole) == POSTS
    assert all(b - a >= 8 for a, b in itertools.pairwise(whole)), whole
