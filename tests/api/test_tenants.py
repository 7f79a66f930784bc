"""Tenant isolation (OWASP API1): a key sees only its own conversations and usage.

Another key's conversation answers exactly like one that does not exist (404), so its
existence never leaks. Two keys, on SQLite and on Postgres.
"""

from __future__ import annotations

import uuid

import pytest

from tests.api.test_usage import key_id, wait_for_records
from tests.conftest import MODEL_ID, RunningServer
from tests.postgres import KEY_A, KEY_ADMIN, KEY_B

AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
AUTH_ADMIN = {"Authorization": f"Bearer {KEY_ADMIN}"}


@pytest.fixture(params=["sqlite", "postgres"])
def keyed(request: pytest.FixtureRequest) -> RunningServer:
    """A running service with API keys KEY_A and KEY_B."""
    name = "keyed_server" if request.param == "sqlite" else "pg_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_another_keys_conversation_is_404_everywhere(keyed: RunningServer) -> None:
    with keyed.http() as http:
        conv = http.post(
            "/v1/conversations",
            headers=AUTH_A,
            json={"system_prompt": "A's secret rules", "metadata": {"pin": "4711"}},
        ).json()
        cid = conv["id"]
        turn = http.post(
            f"/v1/conversations/{cid}/messages",
            headers=AUTH_A,
            json={"content": "My PIN is 4711.", "max_tokens": 2, "temperature": 0},
        )
        assert turn.status_code == 200, turn.text
        missing = f"conv_{uuid.uuid4().hex}"

        # B gets for A's conversation exactly what it gets for one that does not exist.
        for target in (cid, missing):
            for response in (
                http.get(f"/v1/conversations/{target}", headers=AUTH_B),
                http.get(f"/v1/conversations/{target}/messages", headers=AUTH_B),
                http.post(
                    f"/v1/conversations/{target}/messages",
                    headers=AUTH_B,
                    json={"content": "hi", "max_tokens": 2},
                ),
                http.delete(f"/v1/conversations/{target}", headers=AUTH_B),
            ):
                assert response.status_code == 404, response.text
                error = response.json()["error"]
                assert error["code"] == "conversation_not_found"
                assert "4711" not in response.text and "secret" not in response.text
        listed_b = http.get("/v1/conversations", headers=AUTH_B, params={"limit": 100}).json()
        assert cid not in {c["id"] for c in listed_b["data"]}
        # A's cursor is not B's either.
        bad_cursor = http.get("/v1/conversations", headers=AUTH_B, params={"after": cid})
        assert bad_cursor.status_code == 400
        assert bad_cursor.json()["error"]["code"] == "invalid_cursor"
        # No key at all: 401 before anything is looked up.
        assert http.get(f"/v1/conversations/{cid}").status_code == 401
        assert http.get("/v1/conversations").status_code == 401

        # A's conversation is untouched: B's post and delete changed nothing.
        mine = http.get(f"/v1/conversations/{cid}", headers=AUTH_A).json()
        assert mine["message_count"] == 2 and mine["metadata"] == {"pin": "4711"}
        messages = http.get(f"/v1/conversations/{cid}/messages", headers=AUTH_A).json()
        assert messages["data"][0]["content"] == "My PIN is 4711."
        listed_a = http.get("/v1/conversations", headers=AUTH_A, params={"limit": 100}).json()
        assert cid in {c["id"] for c in listed_a["data"]}
        assert http.delete(f"/v1/conversations/{cid}", headers=AUTH_A).status_code == 200
        assert http.get(f"/v1/conversations/{cid}", headers=AUTH_A).status_code == 404


def test_list_conversations_pages_the_callers_own(keyed: RunningServer) -> None:
    with keyed.http() as http:
        # A fresh principal for this test: the key B's list may hold other tests' rows.
        ids = [
            http.post("/v1/conversations", headers=AUTH_B, json={}).json()["id"] for _ in range(5)
        ]
        http.post("/v1/conversations", headers=AUTH_A, json={})
        seen: list[str] = []
        after = None
        while True:
            params: dict[str, str | int] = {"limit": 2} | ({"after": after} if after else {})
            page = http.get("/v1/conversations", headers=AUTH_B, params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            assert body["object"] == "list" and len(body["data"]) <= 2
            seen += [c["id"] for c in body["data"]]
            if not body["has_more"]:
                break
            after = body["last_id"]
        assert len(seen) == len(set(seen))
        # Newest first: the five just made lead, newest first.
        assert seen[:5] == ids[::-1]
        oldest_first = http.get(
            "/v1/conversations", headers=AUTH_B, params={"order": "asc", "limit": 100}
        ).json()
        assert [c["id"] for c in oldest_first["data"]][-5:] == ids
        for cid in ids:
            http.delete(f"/v1/conversations/{cid}", headers=AUTH_B)


def test_usage_shows_only_the_callers_key(keyed: RunningServer) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    with keyed.http() as http:
        for rid, auth in zip(ids, (AUTH_A, AUTH_B, AUTH_B), strict=True):
            r = http.post(
                "/generate/text",
                headers=auth | {"X-Request-ID": rid},
                json={"prompt": "hi", "max_tokens": 2},
            )
            assert r.status_code == 200, r.text
        wait_for_records(keyed, ids)
        for auth, key in ((AUTH_A, KEY_A), (AUTH_B, KEY_B)):
            report = http.get("/v1/usage", headers=auth).json()
            assert report["data"], report
            assert {b["api_key_id"] for b in report["data"]} == {key_id(key)}
            assert all(b["model"] == MODEL_ID for b in report["data"])
        # A user key may not ask for another key's rows; an admin key sees every key's.
        other = http.get("/v1/usage", headers=AUTH_B, params={"api_key_id": key_id(KEY_A)})
        assert other.status_code == 403
        assert other.json()["error"]["code"] == "insufficient_scope"
        everyone = http.get("/v1/usage", headers=AUTH_ADMIN).json()
        assert {key_id(KEY_A), key_id(KEY_B)} <= {b["api_key_id"] for b in everyone["data"]}
        only_a = http.get("/v1/usage", headers=AUTH_ADMIN, params={"api_key_id": key_id(KEY_A)})
        assert {b["api_key_id"] for b in only_a.json()["data"]} == {key_id(KEY_A)}
