"""API keys: off by default; when set, every /v1 and /generate route needs one."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import openai
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from genai_service.api.auth import _database_errors
from genai_service.api.errors import APIError
from genai_service.storage import Storage
from genai_service.storage.database import Database
from tests.conftest import MODEL_ID, RunningServer, run_server

KEYS = ["key-one-0123456789", "key-two-9876543210"]


@pytest.fixture(scope="module")
def secured() -> Iterator[RunningServer]:
    with run_server(api_keys=",".join(KEYS)) as running:
        yield running


def test_auth_off_by_default(client: openai.OpenAI) -> None:
    assert client.models.list().data


@pytest.mark.parametrize("key", KEYS)
def test_valid_keys_pass(secured: RunningServer, key: str) -> None:
    reply = secured.openai(api_key=key).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage is not None


def test_wrong_or_missing_key_is_401(secured: RunningServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        secured.openai(api_key="wrong").models.list()
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with secured.http() as http:
        for path, method in [
            ("/v1/models", "GET"),
            ("/v1/chat/completions", "POST"),
            ("/v1/completions", "POST"),
            ("/generate/text", "POST"),
        ]:
            response = http.request(method, path, json={})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
        basic = http.get("/v1/models", headers={"Authorization": f"Basic {KEYS[0]}"})
        assert basic.status_code == 401


def test_x_api_key_is_an_alternative_and_a_malformed_header_is_named(
    secured: RunningServer,
) -> None:
    with secured.http() as http:
        assert http.get("/v1/models", headers={"X-API-Key": KEYS[1]}).status_code == 200
        wrong = http.get("/v1/models", headers={"X-API-Key": "nope"})
        bare = http.get("/v1/models", headers={"Authorization": KEYS[0]})
        missing = http.get("/v1/models")
    assert wrong.status_code == 401 and "Incorrect" in wrong.json()["error"]["message"]
    assert bare.status_code == 401
    assert bare.json()["error"]["message"].startswith("Malformed Authorization header")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]["message"]


def test_health_needs_no_key(secured: RunningServer) -> None:
    with secured.http() as http:
        assert http.get("/health/live").status_code == 200
        assert http.get("/health/ready").status_code == 200


def test_keys_from_secret_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from genai_service.settings import Settings

    (tmp_path / "api_keys").write_text("from-a-secret-file\n")
    settings = Settings(_env_file=None, _secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert [k.get_secret_value() for k in settings.api_keys] == ["from-a-secret-file"]
    assert "from-a-secret-file" not in repr(settings)


def test_a_database_outage_during_a_key_check_is_503_and_marks_it_down() -> None:
    # The key look-up, the request count and the token budget share this guard.
    db = Database("sqlite+aiosqlite://", create_async_engine("sqlite+aiosqlite://"))
    db.healthy = True
    storage = cast(Storage, SimpleNamespace(db=db))
    with pytest.raises(APIError) as refused, _database_errors(storage):
        raise ConnectionRefusedError("connection refused")
    assert (refused.value.status_code, refused.value.code) == (503, "database_unavailable")
    assert not db.healthy
    # Anything else is not the database's absence: it stays what it is (a 500 upstream).
    with pytest.raises(ValueError), _database_errors(storage):
        raise ValueError("a bug")
