"""API keys in the database: admin routes, scopes, expiry, revocation, the `keys` CLI, and the
per-key quotas (requests per minute, tokens per day) that survive a restart.

On SQLite and on Postgres, with the real model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from genai_service.api import auth
from genai_service.cli import app as cli
from genai_service.storage.models import utcnow
from tests.api.test_usage import wait_for_records
from tests.conftest import MODEL_ID, RunningServer, free_port, make_settings, run_server
from tests.postgres import KEY_A, KEY_ADMIN

AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_ADMIN = {"Authorization": f"Bearer {KEY_ADMIN}"}
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def keyed(request: pytest.FixtureRequest) -> RunningServer:
    """A running service with user keys KEY_A, KEY_B and the admin key KEY_ADMIN."""
    name = "keyed_server" if request.param == "sqlite" else "pg_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def create_key(http: Any, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/admin/keys", headers=AUTH_ADMIN, json={"name": "t"} | body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_admin_routes_manage_keys(keyed: RunningServer) -> None:
    with keyed.http() as http:
        made = create_key(http, name="ci", scope="user")
        key, key_id = made["key"], made["id"]
        assert key.startswith("gsk_") and made["prefix"] == key[:12] and key_id.startswith("key_")
        assert made["scope"] == "user" and made["revoked_at"] is None

        # The new key works, and owns what it stores: A cannot see it, and it cannot see A's.
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200
        conv = http.post("/v1/conversations", headers=bearer(key), json={}).json()
        assert http.get(f"/v1/conversations/{conv['id']}", headers=AUTH_A).status_code == 404
        mine = http.get(f"/v1/conversations/{conv['id']}", headers=bearer(key))
        assert mine.status_code == 200

        # Listed with its prefix, never the key or its hash.
        listed = http.get("/v1/admin/keys", headers=AUTH_ADMIN)
        assert listed.status_code == 200
        assert key_id in {k["id"] for k in listed.json()["data"]}
        assert key not in listed.text and "key_hash" not in listed.text

        # A user key (environment or database) may not manage keys.
        for user in (AUTH_A, bearer(key)):
            for response in (
                http.get("/v1/admin/keys", headers=user),
                http.post("/v1/admin/keys", headers=user, json={"name": "x"}),
                http.delete(f"/v1/admin/keys/{key_id}", headers=user),
            ):
                assert response.status_code == 403, response.text
                assert response.json()["error"]["code"] == "insufficient_scope"

        # An admin key made here may manage keys too.
        admin = create_key(http, name="ops", scope="admin")["key"]
        assert http.get("/v1/admin/keys", headers=bearer(admin)).status_code == 200

        revoked = http.delete(f"/v1/admin/keys/{key_id}", headers=AUTH_ADMIN)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        refused = http.get("/v1/models", headers=bearer(key))
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "This API key has been revoked."
        missing = http.delete("/v1/admin/keys/key_000000000000", headers=AUTH_ADMIN)
        assert missing.status_code == 404
        bad = http.post("/v1/admin/keys", headers=AUTH_ADMIN, json={"name": "x", "scope": "root"})
        assert bad.status_code == 400
        unknown = http.get("/v1/models", headers=bearer("gsk_" + "x" * 43))
        assert unknown.status_code == 401


def test_key_expires(keyed: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with keyed.http() as http:
        past = int(utcnow().timestamp()) - 3600
        refused = http.post(
            "/v1/admin/keys", headers=AUTH_ADMIN, json={"name": "x", "expires_at": past}
        )
        assert refused.status_code == 400
        soon = int((utcnow() + timedelta(hours=1)).timestamp())
        key = create_key(http, expires_at=soon)["key"]
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200
        monkeypatch.setattr(auth, "clock", lambda: utcnow() + timedelta(hours=2))
        expired = http.get("/v1/models", headers=bearer(key))
        assert expired.status_code == 401
        assert expired.json()["error"]["message"] == "This API key has expired."


def test_admin_routes_need_authentication_on(server: RunningServer) -> None:
    with server.http() as http:
        response = http.get("/v1/admin/keys")
        assert response.status_code == 403
        assert "genai-service keys create --scope admin" in response.json()["error"]["message"]


# --- quotas ----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def restartable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], Iterator[RunningServer]]:
    """Starts a service (admin key KEY_ADMIN) on one database, as often as asked: a restart."""
    if request.param == "sqlite":
        where: dict[str, Any] = {"data_dir": tmp_path}
    else:
        where = {"database_url": request.getfixturevalue("pg_databases")(), "auto_migrate": True}

    def start() -> Any:
        return run_server(make_settings(admin_api_keys=[KEY_ADMIN], n_threads=1, **where))

    return start  # type: ignore[return-value]


def assert_limited(response: Any, kind: str, limit: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["code"] == "rate_limit_exceeded"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers[f"x-ratelimit-limit-{kind}"] == str(limit)
    assert response.headers[f"x-ratelimit-remaining-{kind}"] == "0"
    assert response.headers[f"x-ratelimit-reset-{kind}"]


def test_requests_per_minute_survive_a_restart(
    restartable: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quota clock stands still at 30 s past a minute: the window is fixed, the test exact.
    minute = utcnow().replace(second=30, microsecond=0)
    monkeypatch.setattr(auth, "clock", lambda: minute)
    with restartable() as first, first.http() as http:
        key = create_key(http, requests_per_minute=2)["key"]
        for remaining in (1, 0):
            ok = http.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
            assert ok.status_code == 200, ok.text
            assert ok.headers["x-ratelimit-limit-requests"] == "2"
            assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert ok.headers["x-ratelimit-reset-requests"] == "30s"
        third = http.post("/v1/chat/completions", headers=bearer(key), json=CHAT)
        assert_limited(third, "requests", 2)
        assert third.headers["retry-after"] == "30"
        # Every route counts, not just generation.
        assert_limited(http.get("/v1/models", headers=bearer(key)), "requests", 2)
    with restartable() as second, second.http() as http:
        assert_limited(http.get("/v1/models", headers=bearer(key)), "requests", 2)
        monkeypatch.setattr(auth, "clock", lambda: minute + timedelta(minutes=1))
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200


def test_tokens_per_day_survive_a_restart(restartable: Callable[[], Any]) -> None:
    with restartable() as first, first.http() as http:
        made = create_key(http, tokens_per_day=5)
        key = made["key"]
        rid = uuid.uuid4().hex
        ok = http.post(
            "/v1/chat/completions", headers=bearer(key) | {"X-Request-ID": rid}, json=CHAT
        )
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit-tokens"] == "5"
        assert ok.headers["x-ratelimit-remaining-tokens"] == "5"
        assert ok.json()["usage"]["total_tokens"] > 5  # this request spends the budget
        assert rid in wait_for_records(first, [rid])
        for over in (
            http.post("/v1/chat/completions", headers=bearer(key), json=CHAT),
            http.post("/generate/text", headers=bearer(key), json={"prompt": "hi"}),
        ):
            assert_limited(over, "tokens", 5)
        # Routes that do not generate still answer, and show what was spent.
        usage = http.get("/v1/usage", headers=bearer(key))
        assert usage.status_code == 200 and usage.json()["totals"]["requests"] == 1
    with restartable() as second, second.http() as http:
        assert_limited(
            http.post("/v1/chat/completions", headers=bearer(key), json=CHAT), "tokens", 5
        )


# --- the CLI -----------------------------------------------------------------------------------
def test_keys_cli_and_authentication_from_the_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'genai.db'}"
    runner = CliRunner()
    made = runner.invoke(
        cli, ["keys", "create", "--name", "ci", "--rpm", "100", "--database-url", url]
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("gsk_") and len(key) == 47
    key_id = made.stderr.split()[1]
    assert key not in made.stderr

    listed = runner.invoke(cli, ["keys", "list", "--database-url", url])
    assert listed.exit_code == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout and key[:12] in listed.stdout

    # No API_KEYS, but a key in the database: authentication is on.
    with run_server(database_url=url) as server, server.http() as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers=bearer("not-needed")).status_code == 401
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200

        revoked = runner.invoke(cli, ["keys", "revoke", key_id, "--database-url", url])
        assert revoked.exit_code == 0, revoked.output
        assert http.get("/v1/models", headers=bearer(key)).status_code == 401
        # Revoking the last key does not turn authentication off.
        assert http.get("/v1/models").status_code == 401
    assert "revoked" in runner.invoke(cli, ["keys", "list", "--database-url", url]).stdout
    unknown = runner.invoke(cli, ["keys", "revoke", "key_nope", "--database-url", url])
    assert unknown.exit_code == 1 and "no API key" in unknown.output
    wrong = runner.invoke(cli, ["keys", "create", "--name", "x", "--scope", "root"])
    assert wrong.exit_code == 2


def test_metrics_for_admin_keys_only_when_protected() -> None:
    from tests.fakes import FakeEngine

    with (
        run_server(
            engine_factory=lambda s: FakeEngine(),
            warmup=False,
            api_keys=[KEY_A],
            admin_api_keys=[KEY_ADMIN],
            metrics_require_key=True,
        ) as server,
        server.http() as http,
    ):
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=AUTH_A).status_code == 403
        scraped = http.get("/metrics", headers=AUTH_ADMIN)
        assert scraped.status_code == 200 and "genai_" in scraped.text


def test_without_env_keys_an_unreachable_database_fails_closed() -> None:
    # Whether the database holds keys is unknown: the service answers 503, it does not run open.
    from tests.fakes import FakeEngine

    port = free_port()  # nothing listens there
    with (
        run_server(
            engine_factory=lambda s: FakeEngine(),
            warmup=False,
            database_url=f"postgresql+asyncpg://genai:pw@127.0.0.1:{port}/genai",
            db_connect_timeout=1,
        ) as server,
        server.http() as http,
    ):
        refused = http.get("/v1/models")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert "pw" not in refused.text
        assert http.get("/health/live").status_code == 200
