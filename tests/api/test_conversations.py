"""The conversations API against the real SmolLM2 model, on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from genai_service.api.routes.conversations import fit_history
from genai_service.storage.models import Message
from tests.conftest import MODEL_ID, RunningServer, run_server
from tests.postgres import KEY_A, run_async


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest) -> tuple[RunningServer, dict[str, str]]:
    """A running service and the headers its clients send."""
    if request.param == "sqlite":
        return request.getfixturevalue("server"), {}
    return request.getfixturevalue("pg_server"), {"Authorization": f"Bearer {KEY_A}"}


def _client(api: tuple[RunningServer, dict[str, str]]) -> httpx.Client:
    server, headers = api
    return server.http(headers=headers)


def test_create_get_post_list_delete(api: tuple[RunningServer, dict[str, str]]) -> None:
    with _client(api) as http:
        created = http.post(
            "/v1/conversations",
            json={"system_prompt": "Answer in one word.", "metadata": {"user": "u1"}},
        )
        assert created.status_code == 200, created.text
        conv = created.json()
        assert conv["object"] == "conversation" and conv["id"].startswith("conv_")
        assert conv["metadata"] == {"user": "u1"} and conv["message_count"] == 0

        turn = http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"content": "What color is the sky?", "max_tokens": 8, "temperature": 0},
        )
        assert turn.status_code == 200, turn.text
        body = turn.json()
        user, reply = body["messages"]
        assert (user["role"], user["content"]) == ("user", "What color is the sky?")
        assert reply["role"] == "assistant" and reply["content"].strip()
        assert (user["index"], reply["index"]) == (0, 1)
        assert body["model"] == MODEL_ID and body["dropped_messages"] == 0
        assert 0 < body["usage"]["completion_tokens"] <= 8
        assert reply["tokens"] == body["usage"]["completion_tokens"]

        second = http.post(
            f"/v1/conversations/{conv['id']}/messages", json={"content": "Why?", "max_tokens": 4}
        ).json()
        # The stored history is in the prompt: the second prompt is longer than the first.
        assert second["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"]

        assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 4
        page = http.get(f"/v1/conversations/{conv['id']}/messages", params={"limit": 3}).json()
        assert [m["index"] for m in page["data"]] == [0, 1, 2] and page["has_more"]
        rest = http.get(
            f"/v1/conversations/{conv['id']}/messages",
            params={"limit": 3, "after": page["last_id"]},
        ).json()
        assert [m["index"] for m in rest["data"]] == [3] and not rest["has_more"]
        desc = http.get(
            f"/v1/conversations/{conv['id']}/messages", params={"order": "desc", "limit": 1}
        ).json()
        assert desc["data"][0]["index"] == 3

        deleted = http.delete(f"/v1/conversations/{conv['id']}")
        assert deleted.json() == {
            "id": conv["id"],
            "object": "conversation.deleted",
            "deleted": True,
        }
        for response in (
            http.get(f"/v1/conversations/{conv['id']}"),
            http.get(f"/v1/conversations/{conv['id']}/messages"),
            http.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "hi"}),
            http.delete(f"/v1/conversations/{conv['id']}"),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "conversation_not_found"


def test_bad_requests_are_clear_4xx(server: RunningServer) -> None:
    with server.http() as http:
        conv = http.post("/v1/conversations", json={}).json()
        cases = [
            (http.post("/v1/conversations", json={"metadata": {str(i): "v" for i in range(17)}})),
            (http.post("/v1/conversations", json={"model": "no-such-model"})),
            (http.post(f"/v1/conversations/{conv['id']}/messages", json={"content": ""})),
            (http.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "x", "max_tokens": 0})),
            (http.get(f"/v1/conversations/{conv['id']}/messages", params={"after": "msg_x"})),
            (http.get(f"/v1/conversations/{conv['id']}/messages", params={"limit": 1000})),
        ]  # fmt: skip
        for response in cases:
            assert 400 <= response.status_code < 500, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
        assert [r.status_code for r in cases] == [400, 404, 400, 400, 400, 400]
        assert cases[4].json()["error"]["code"] == "invalid_cursor"


def _sse(lines: list[str]) -> list[Any]:
    return [
        json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
        for line in lines
        if line.startswith("data: ")
    ]


def test_streaming_turn_is_stored(api: tuple[RunningServer, dict[str, str]]) -> None:
    with _client(api) as http:
        conv = http.post("/v1/conversations", json={"system_prompt": "Be short."}).json()
        url = f"/v1/conversations/{conv['id']}/messages"
        with http.stream(
            "POST", url, json={"content": "Say hi", "max_tokens": 8, "stream": True}
        ) as r:
            assert r.status_code == 200
            events = _sse(list(r.iter_lines()))
        assert events[-1] == "[DONE]"
        deltas = [e["delta"] for e in events[:-1] if e["object"] == "conversation.turn.delta"]
        turn = events[-2]
        assert turn["object"] == "conversation.turn"
        assert turn["messages"][1]["content"] == "".join(deltas)
        stored = http.get(url).json()["data"]
        assert [m["content"] for m in stored] == ["Say hi", "".join(deltas)]


def test_client_leaving_a_stream_stores_nothing(server: RunningServer) -> None:
    with server.http() as http:
        conv = http.post("/v1/conversations", json={}).json()
        url = f"/v1/conversations/{conv['id']}/messages"
        body = {"content": "Count to one hundred.", "max_tokens": 200, "stream": True}
        with http.stream("POST", url, json=body) as r:
            for line in r.iter_lines():
                if "conversation.turn.delta" in line:
                    break  # hang up after the first piece
        # The lock is free again and nothing was half-written.
        done = http.post(url, json={"content": "hi", "max_tokens": 2})
        assert done.status_code == 200
        assert [m["index"] for m in done.json()["messages"]] == [0, 1]
        assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 2


def test_oldest_turns_are_dropped_and_system_prompt_kept(server: RunningServer) -> None:
    engine = server.state.find(MODEL_ID)
    assert engine is not None
    history = [
        Message(role=role, content=f"{role} turn {i}: " + "lorem ipsum dolor " * 20, seq=i)
        for i, role in enumerate(["user", "assistant"] * 6)
    ]
    context = engine.info.context_length
    full, dropped = run_async(fit_history(engine, "SYSTEM RULES", history, "newest?", 8))
    assert dropped == 0
    reserve = context - len(full.token_ids) + 200  # about two turns too long
    prompt, dropped = run_async(fit_history(engine, "SYSTEM RULES", history, "newest?", reserve))
    assert dropped > 0 and dropped % 2 == 0
    assert len(prompt.token_ids) <= context - reserve
    assert "SYSTEM RULES" in prompt.text and "newest?" in prompt.text
    assert "user turn 0:" not in prompt.text and "assistant turn 11:" in prompt.text
    # Even with no room for any history, the system prompt and the new message stay.
    bare, dropped = run_async(fit_history(engine, "SYSTEM RULES", history, "newest?", context - 40))
    assert dropped == len(history) and "SYSTEM RULES" in bare.text


async def _post_concurrently(server: RunningServer, headers: dict[str, str], n: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=240) as http:
        conv = await http.post("/v1/conversations", json={"system_prompt": "Reply briefly."})
        cid = conv.json()["id"]

        async def post(i: int) -> dict[str, Any]:
            r = await http.post(
                f"/v1/conversations/{cid}/messages",
                json={"content": f"message {i}", "max_tokens": 1, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        turns = await asyncio.gather(*(post(i) for i in range(n)))
        stored: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
            page = (await http.get(f"/v1/conversations/{cid}/messages", params=params)).json()
            stored += page["data"]
            if not page["has_more"]:
                break
            after = page["last_id"]

    assert [m["index"] for m in stored] == list(range(2 * n))  # no gaps, nothing lost
    assert {m["content"] for m in stored[::2]} == {f"message {i}" for i in range(n)}
    by_id = {m["id"]: m for m in stored}
    for turn in turns:
        user, reply = turn["messages"]
        assert reply["index"] == user["index"] + 1  # each reply right after its question
        assert by_id[user["id"]]["content"] == user["content"]
        assert by_id[reply["id"]]["content"] == reply["content"]
    # Every post saw the turns stored before it: prompts grow with the position until the
    # context window is full, then the oldest turns are dropped (more and more of them).
    ordered = sorted(turns, key=lambda t: t["messages"][0]["index"])
    dropped = [t["dropped_messages"] for t in ordered]
    assert dropped == sorted(dropped) and dropped[0] == 0 and dropped[-1] > 0
    growing = [t["usage"]["prompt_tokens"] for t in ordered if t["dropped_messages"] == 0]
    assert len(growing) > 3 and all(a < b for a, b in itertools.pairwise(growing))
    context = server.state.settings.n_ctx
    assert all(t["usage"]["prompt_tokens"] < context for t in ordered)


@pytest.fixture(params=["sqlite", "postgres"])
def small_context_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A server with a 128-token window: long histories must be cut to fit (and stay cheap:
    every prompt is evaluated afresh)."""
    url = request.getfixturevalue("pg_databases")() if request.param == "postgres" else None
    with run_server(n_ctx=128, database_url=url, auto_migrate=True, n_threads=1) as running:
        yield running


def test_fifty_concurrent_posts_keep_order(small_context_server: RunningServer) -> None:
    run_async(_post_concurrently(small_context_server, {}, 50))
