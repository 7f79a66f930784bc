"""Every generation writes one usage record; GET /v1/usage sums them by day, model and key."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from genai_service.storage.database import make_engine
from genai_service.storage.models import CompletionRecord
from tests.conftest import MODEL_ID, RunningServer
from tests.postgres import KEY_A, KEY_B, run_async


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


async def _records(url: str, request_ids: list[str]) -> dict[str, CompletionRecord]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(CompletionRecord).where(CompletionRecord.request_id.in_(request_ids))
            )
            return {row.request_id: row for row in rows}  # type: ignore[misc]
    finally:
        await engine.dispose()


def wait_for_records(server: RunningServer, request_ids: list[str]) -> dict[str, Any]:
    url = server.state.settings.resolved_database_url
    deadline = time.monotonic() + 20
    while True:
        found = run_async(_records(url, request_ids))
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found  # type: ignore[no-any-return]
        time.sleep(0.1)


def _rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest) -> tuple[RunningServer, str | None, str | None]:
    """A server and the two keys its clients use (None: auth off)."""
    if request.param == "sqlite":
        return request.getfixturevalue("server"), None, None
    return request.getfixturevalue("pg_server"), KEY_A, KEY_B


def test_every_generation_is_recorded(api: tuple[RunningServer, str | None, str | None]) -> None:
    server, key_a, key_b = api

    def headers(key: str | None, rid: str) -> dict[str, str]:
        return {"X-Request-ID": rid} | ({"Authorization": f"Bearer {key}"} if key else {})

    ids = {name: _rid() for name in ("chat", "stream", "text", "completion", "left")}
    with server.http() as http:
        chat = http.post(
            "/v1/chat/completions",
            headers=headers(key_a, ids["chat"]),
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
            },
        ).json()
        with http.stream(
            "POST",
            "/v1/completions",
            headers=headers(key_b, ids["stream"]),
            json={"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 6, "stream": True},
        ) as r:
            assert r.status_code == 200
            list(r.iter_lines())
        text = http.post(
            "/generate/text",
            headers=headers(key_b, ids["text"]),
            json={"prompt": "hi", "max_tokens": 4},
        ).json()
        completion = http.post(
            "/v1/completions",
            headers=headers(key_a, ids["completion"]),
            json={"model": MODEL_ID, "prompt": "1, 2, 3,", "max_tokens": 5},
        ).json()
        with http.stream(
            "POST",
            "/v1/chat/completions",
            headers=headers(key_a, ids["left"]),
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Write a long story."}],
                "max_tokens": 300,
                "stream": True,
            },
        ) as r:
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the client goes away after the first piece
    # fmt: on

    records = wait_for_records(server, list(ids.values()))
    assert set(records) == set(ids.values())
    for name, rid in ids.items():
        record = records[rid]
        assert record.model == MODEL_ID and record.engine == "llama.cpp"
        assert record.status == ("cancelled" if name == "left" else "ok")
        assert record.latency_ms > 0
        if record.ttft_ms is not None:
            assert 0 < record.ttft_ms <= record.latency_ms
    assert records[ids["chat"]].endpoint == "/v1/chat/completions"
    assert records[ids["chat"]].completion_tokens == chat["usage"]["completion_tokens"]
    assert records[ids["chat"]].prompt_tokens == chat["usage"]["prompt_tokens"]
    assert records[ids["text"]].completion_tokens == text["usage"]["completion_tokens"]
    assert records[ids["completion"]].completion_tokens == completion["usage"]["completion_tokens"]
    assert (
        records[ids["stream"]].completion_tokens == 6
        or records[ids["stream"]].completion_tokens <= 6
    )
    assert records[ids["stream"]].ttft_ms is not None
    assert 1 <= records[ids["left"]].completion_tokens < 300
    expected_a = key_id(key_a) if key_a else None
    expected_b = key_id(key_b) if key_b else None
    assert records[ids["chat"]].api_key_id == expected_a
    assert records[ids["text"]].api_key_id == expected_b


def test_usage_report_by_model_key_and_day(pg_server: RunningServer) -> None:
    auth_a = {"Authorization": f"Bearer {KEY_A}"}
    auth_b = {"Authorization": f"Bearer {KEY_B}"}
    with pg_server.http() as http:

        def buckets() -> dict[tuple[str, str | None], dict[str, Any]]:
            # Each key sees only its own rows: the two reports together hold both keys.
            found = {}
            for auth in (auth_a, auth_b):
                report = http.get("/v1/usage", headers=auth).json()
                assert report["object"] == "usage.report"
                found |= {(b["model"], b["api_key_id"]): b for b in report["data"]}
            return found

        before = buckets()
        ids = [_rid() for _ in range(3)]
        for rid, auth in zip(ids, (auth_a, auth_b, auth_b), strict=True):
            r = http.post(
                "/generate/text",
                headers=auth | {"X-Request-ID": rid},
                json={"prompt": "hi", "max_tokens": 3},
            )
            assert r.status_code == 200
        wait_for_records(pg_server, ids)
        after = buckets()

        def added(key: str) -> int:
            now, then = after.get((MODEL_ID, key_id(key))), before.get((MODEL_ID, key_id(key)))
            return (now["requests"] if now else 0) - (then["requests"] if then else 0)

        assert (added(KEY_A), added(KEY_B)) == (1, 2)
        bucket = after[(MODEL_ID, key_id(KEY_B))]
        assert bucket["total_tokens"] == bucket["prompt_tokens"] + bucket["completion_tokens"]
        assert bucket["day"] == time.strftime("%Y-%m-%d", time.gmtime())

        # A window in the past is empty; a bad or reversed range is a 400; no key is a 401.
        old = http.get(
            "/v1/usage", headers=auth_a, params={"start": "2001-01-01", "end": "2001-01-02"}
        )
        assert old.json()["data"] == [] and old.json()["totals"]["requests"] == 0
        since = int(time.time()) - 3600
        recent = http.get("/v1/usage", headers=auth_b, params={"start": str(since)}).json()
        assert recent["totals"]["requests"] >= 2
        for params in ({"start": "yesterday"}, {"start": "2030-01-02", "end": "2030-01-01"}):
            bad = http.get("/v1/usage", headers=auth_a, params=params)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"
        assert http.get("/v1/usage").status_code == 401


def test_key_id_is_not_the_key() -> None:
    assert key_id(KEY_A) != key_id(KEY_B)
    assert KEY_A not in key_id(KEY_A) and len(key_id(KEY_A)) == 8
    assert isinstance(httpx.__version__, str)


class BreakingEngine:
    """The real engine, except that it fails after its first piece when the prompt says
    BREAK: engine failures are rare, so this stands in for one (the real path is above)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def features(self) -> frozenset[str]:
        # It must see every piece: the engine process may not write them to the client itself.
        return self._inner.features - {"direct_stream"}

    def stream(self, prompt: Any, params: Any, cancel: Any = None) -> Any:
        async def pieces() -> Any:
            async for chunk in self._inner.stream(prompt, params, cancel):
                yield chunk
                if "BREAK" in prompt.text:
                    raise RuntimeError("the engine broke")

        return pieces()


def test_failed_generations_are_recorded_as_errors() -> None:
    from genai_service.engines import create_engine
    from tests.conftest import run_server

    with run_server(
        engine_factory=lambda s: BreakingEngine(create_engine(s)), n_threads=1
    ) as server:
        ids = [_rid(), _rid(), _rid()]
        with server.http(headers={"Connection": "close"}) as http:
            plain = http.post(
                "/generate/text",
                headers={"X-Request-ID": ids[0]},
                json={"prompt": "BREAK please", "max_tokens": 8},
            )
            assert plain.status_code == 500 and "error" in plain.json()
            with http.stream(
                "POST",
                "/v1/chat/completions",
                headers={"X-Request-ID": ids[1]},
                json={
                    "model": MODEL_ID,
                    "messages": [{"role": "user", "content": "BREAK now"}],
                    "max_tokens": 8,
                    "stream": True,
                },
            ) as r:
                assert any('"server_error"' in line for line in r.iter_lines())
            conv = http.post("/v1/conversations", json={}).json()
            turn = http.post(
                f"/v1/conversations/{conv['id']}/messages",
                headers={"X-Request-ID": ids[2]},
                json={"content": "BREAK it", "max_tokens": 8},
            )
            assert turn.status_code == 500
        # A failed reply stores neither turn (new connection: a 500 closes the old one).
        with server.http() as http:
            assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 0
        records = wait_for_records(server, ids)
        assert [records[i].status for i in ids] == ["error"] * 3
        assert records[ids[2]].endpoint == "/v1/conversations/{conversation_id}/messages"
