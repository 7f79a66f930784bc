"""No 5xx on bad input: text that is not Unicode, out-of-range dates, oversized bodies.

Each of these once answered 500 (and a conversation was stored that no GET could show).
They answer 4xx in the OpenAI error format now, and nothing is stored for them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from genai_service.api.errors import install_error_handlers
from genai_service.middleware import RequestContextMiddleware, body_problem
from tests.api.test_errors import assert_openai_error
from tests.conftest import MODEL_ID, RunningServer, free_port
from tests.postgres import KEY_A

LONE = "\ud800"  # json.dumps writes it as the escape "\ud800"


def _chat(content: str, system: str = "Be brief.") -> dict[str, Any]:
    return {
        "model": MODEL_ID,
        "max_tokens": 1,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}],
    }


SURROGATE_CASES = [
    ("/v1/chat/completions", _chat(f"hi {LONE}")),
    ("/v1/chat/completions", _chat("hi", system=f"rules {LONE}")),
    ("/v1/completions", {"model": MODEL_ID, "prompt": f"Once {LONE}", "max_tokens": 1}),
    ("/v1/embeddings", {"input": ["fine", "bad \udc00"]}),
    ("/generate/text", {"prompt": "hi", "system": f"x{LONE}", "max_tokens": 1}),
    ("/v1/conversations", {"metadata": {"user": f"u{LONE}"}}),
    ("/v1/conversations", {"metadata": {f"k{LONE}": "v"}}),
    ("/v1/conversations", {"system_prompt": f"s{LONE}"}),
]


def _conversation_ids(http: httpx.Client) -> set[str]:
    page = http.get("/v1/conversations", params={"limit": 100}).json()
    return {c["id"] for c in page["data"]}


def test_lone_surrogates_are_400_and_store_nothing(server: RunningServer) -> None:
    with server.http() as http:
        before = _conversation_ids(http)
        conv = http.post("/v1/conversations", json={}).json()
        cases = [
            *SURROGATE_CASES,
            (f"/v1/conversations/{conv['id']}/messages", {"content": f"hi {LONE}"}),
        ]
        for path, body in cases:
            response = http.post(
                path,
                content=json.dumps(body),  # ASCII, with the surrogate as a \u escape
                headers={"X-Request-ID": "surrogate-probe", "content-type": "application/json"},
            )
            error = assert_openai_error(response, 400)
            assert error["code"] == "invalid_unicode", (path, body)
            assert response.headers["x-request-id"] == "surrogate-probe"
        # Raw CESU-8 bytes of a surrogate (not UTF-8) in an otherwise fine body.
        raw = b'{"prompt": "hi \xed\xa0\x80", "max_tokens": 1}'
        response = http.post(
            "/generate/text", content=raw, headers={"content-type": "application/json"}
        )
        assert assert_openai_error(response, 400)["code"] == "invalid_unicode"
        # Nothing was stored: no new conversation, no message in the existing one.
        assert _conversation_ids(http) == before | {conv["id"]}
        assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 0
        http.delete(f"/v1/conversations/{conv['id']}")
        # A valid pair (an emoji), and an escaped backslash before "ud800", are fine.
        for prompt in ("smile \U0001f600", "path \\ud800"):
            ok = http.post("/generate/text", json={"prompt": prompt, "max_tokens": 1})
            assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        (b'{"a": "\\ud800"}', True),
        (b'{"a": "\\uDFFF"}', True),
        (b'{"\\udc00": 1}', True),
        (b'{"a": [[{"b": "x\\ud83d"}]]}', True),
        (b'{"a": "\\ud83d\\ude00"}', False),
        (b'{"a": "\\\\ud800"}', False),
        (b'{"a": "\\ud800', False),  # malformed JSON: the route's parser answers it
        (b'{"a": "\xed\xa0\x80"}', True),
        (b'{"a": "\xff"}', True),
        (b'{"a": "plain"}', False),
        (b'{"a": "x\\u0000"}', True),  # NUL: Postgres text cannot hold it
        (b'{"a": "x\\\\u0000"}', False),  # a backslash, then "u0000"
    ],
)
def test_body_problem(body: bytes, bad: bool) -> None:
    assert (body_problem(body) is not None) is bad
    assert body_problem(body, "text/plain") is None  # only JSON bodies are text here


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest) -> tuple[RunningServer, dict[str, str]]:
    if request.param == "sqlite":
        return request.getfixturevalue("server"), {}
    return request.getfixturevalue("pg_server"), {"Authorization": f"Bearer {KEY_A}"}


def test_nul_is_400_everywhere(api: tuple[RunningServer, dict[str, str]]) -> None:
    """NUL once answered 500 on Postgres (its text type cannot hold it), after generating."""
    server, headers = api
    with server.http(headers=headers) as http:
        conv = http.post("/v1/conversations", json={}).json()
        requests = [
            ("POST", "/v1/conversations", {"system_prompt": "a\x00b"}),
            ("POST", "/v1/conversations", {"metadata": {"k": "a\x00b"}}),
            ("POST", f"/v1/conversations/{conv['id']}/messages", {"content": "a\x00b"}),
            ("POST", "/generate/text", {"prompt": "a\x00b", "max_tokens": 1}),
            ("GET", "/v1/conversations/conv_%00x", None),
            ("DELETE", "/v1/conversations/conv_%00x", None),
            ("GET", "/v1/conversations?after=%00", None),
            ("GET", f"/v1/conversations/{conv['id']}/messages?after=msg_%00", None),
        ]
        for method, path, body in requests:
            response = http.request(method, path, json=body)
            assert_openai_error(response, 400)
        assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"end": "0001-01-05"},
        {"start": "0001-01-01T00:00:00+01:00"},
        {"end": "9999-12-31T23:59:59-01:00"},
        {"start": "0001-01-01", "end": "0001-01-02"},
        {"end": "99999999999999999999"},
        {"start": "1e400"},
        {"end": "9999-12-31"},
    ],
)
def test_usage_dates_out_of_range_are_400(server: RunningServer, params: dict[str, str]) -> None:
    with server.http() as http:
        response = http.get("/v1/usage", params=params)
    error = assert_openai_error(response, 400)
    assert error["param"] in ("start", "end")


def test_oversized_body_is_413_before_it_is_read(server: RunningServer) -> None:
    limit = server.state.settings.max_request_bytes  # MAX_REQUEST_BYTES
    big = b'{"prompt": "' + b"a" * (limit + 1) + b'"}'
    with server.http() as http:
        response = http.post(
            "/generate/text", content=big, headers={"content-type": "application/json"}
        )
        error = assert_openai_error(response, 413)
        assert error["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"prompt": "'
            for _ in range(limit // 65536 + 2):
                yield b"a" * 65536
            yield b'"}'

        streamed = http.post(
            "/generate/text", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_openai_error(streamed, 413)


@pytest.fixture(scope="module")
def fragile() -> Iterator[str]:
    """A bare app (no model) whose /boom raises: the unhandled-error path over real HTTP."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(RequestContextMiddleware)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_unhandled_500_has_request_id_and_closes(fragile: str) -> None:
    with httpx.Client(base_url=fragile) as http:
        response = http.get("/boom", headers={"X-Request-ID": "probe-500"})
        error = assert_openai_error(response, 500)
        assert "secret internal detail" not in response.text
        assert "probe-500" in error["message"]
        assert response.headers["x-request-id"] == "probe-500"
        assert response.headers["connection"] == "close"
        # The client was told the connection ends, so the next request opens a new one.
        assert http.get("/ok").status_code == 200


async def _insert_legacy_conversation(url: str, conversation_id: str) -> None:
    from sqlalchemy import text

    from genai_service.storage.database import make_engine

    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            # What the old create stored: the JSON column keeps the surrogate as an escape.
            await conn.execute(
                text(
                    "INSERT INTO conversations (id, owner, created_at, updated_at, metadata, "
                    "message_count) VALUES (:id, 'anonymous', '2026-01-01 00:00:00', "
                    "'2026-01-01 00:00:00', :meta, 0)"
                ),
                {"id": conversation_id, "meta": '{"user": "u\\ud800"}'},
            )
    finally:
        await engine.dispose()


def test_a_row_stored_before_the_fix_is_readable_and_deletable(server: RunningServer) -> None:
    from tests.postgres import run_async

    cid = f"conv_legacy{time.monotonic_ns()}"
    run_async(_insert_legacy_conversation(server.state.settings.resolved_database_url, cid))
    with server.http() as http:
        shown = http.get(f"/v1/conversations/{cid}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["metadata"] == {"user": "u\ufffd"}
        assert cid in {c["id"] for c in http.get("/v1/conversations?limit=100").json()["data"]}
        assert http.delete(f"/v1/conversations/{cid}").status_code == 200


def test_message_count_and_size_caps_are_413_before_the_engine(server: RunningServer) -> None:
    settings = server.state.settings  # MAX_MESSAGES, MAX_MESSAGE_CHARS
    many = [{"role": "user", "content": "hi"}] * (settings.max_messages + 1)
    huge = "a" * (settings.max_message_chars + 1)
    parts = [{"type": "text", "text": "a" * (settings.max_message_chars // 2 + 1)}] * 2
    with server.http() as http:
        conv = http.post("/v1/conversations", json={}).json()
        for path, body, code, param in [
            ("/v1/chat/completions", {"model": MODEL_ID, "messages": many}, "array", "messages"),
            ("/v1/chat/completions", _chat(huge), "string", "messages[1]"),
            (
                "/v1/chat/completions",
                {"model": MODEL_ID, "messages": [{"role": "user", "content": parts}]},
                "string",
                "messages[0]",
            ),
            ("/v1/completions", {"model": MODEL_ID, "prompt": huge}, "string", "prompt"),
            ("/v1/completions", {"model": MODEL_ID, "prompt": ["a"] * 300}, "array", "prompt"),
            ("/v1/responses", {"model": MODEL_ID, "input": many}, "array", "input"),
            ("/v1/embeddings", {"model": "x", "input": [huge]}, "string", "input[0]"),
            ("/generate/text", {"prompt": "hi", "system": huge}, "string", "system"),
            ("/tokenize", {"messages": many}, "array", "messages"),
            (f"/v1/conversations/{conv['id']}/messages", {"content": huge}, "string", "content"),
        ]:
            error = assert_openai_error(http.post(path, json=body), 413)
            assert error["code"] == f"{code}_above_max_length", (path, error)
            assert error["param"] == param, (path, error)
        # Nothing was stored for the refused turn.
        assert http.get(f"/v1/conversations/{conv['id']}").json()["message_count"] == 0
        # At the limits exactly, the request goes through.
        at_limit = {"model": MODEL_ID, "max_tokens": 1, "messages": many[:-1]}
        assert http.post("/tokenize", json=at_limit).status_code == 200
