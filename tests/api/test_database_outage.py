"""Postgres stops and starts again while the service runs: 503s in the OpenAI format while it
is down, plain completions keep serving, and everything recovers by itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from genai_service.storage.pgcluster import PgCluster
from tests.api.test_usage import wait_for_records
from tests.conftest import MODEL_ID, run_server, wait_for
from tests.postgres import KEY_A

AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def cluster(pg_cluster: PgCluster | None) -> Iterator[PgCluster]:
    """A cluster this test may stop: the suite's own, or a new one under TEST_DATABASE_URL."""
    if pg_cluster is not None:
        yield pg_cluster
        if not pg_cluster.running:
            pg_cluster.start()
        return
    own = PgCluster()
    own.start()
    try:
        yield own
    finally:
        own.destroy()


def test_database_outage_and_recovery(cluster: PgCluster) -> None:
    url = cluster.create_database(f"outage_{int(time.time() * 1000)}")
    with (
        run_server(database_url=url, auto_migrate=True, api_keys=[KEY_A], n_threads=1) as server,
        server.http(headers=AUTH) as http,
    ):
        conv = http.post("/v1/conversations", json={"system_prompt": "Be brief."}).json()
        first = http.post(
            f"/v1/conversations/{conv['id']}/messages", json={"content": "hi", "max_tokens": 2}
        )
        assert first.status_code == 200
        assert http.get("/health/ready").json()["database"]["status"] == "ok"

        cluster.stop()
        ready = http.get("/health/ready")
        # Plain completions still serve, so the instance stays in rotation but says why.
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["database"]["status"] == "unavailable"
        for response in (
            http.post("/v1/conversations", json={}),
            http.get(f"/v1/conversations/{conv['id']}"),
            http.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "x"}),
            http.get("/v1/usage"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
            error = response.json()["error"]
            assert error["code"] == "database_unavailable"
            assert set(error) == {"message", "type", "param", "code"}

        during = "outage-" + conv["id"]
        chat = http.post(
            "/v1/chat/completions",
            headers={"X-Request-ID": during},
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
        )
        assert chat.status_code == 200  # the usage record waits in memory

        # With COMPLETIONS_WITHOUT_DATABASE=false the ledger is mandatory: 503 instead.
        server.state.settings.completions_without_database = False
        try:
            strict = http.post("/generate/text", json={"prompt": "hi", "max_tokens": 2})
            assert strict.status_code == 503
            assert strict.json()["error"]["code"] == "database_unavailable"
            assert http.get("/health/ready").status_code == 503
        finally:
            server.state.settings.completions_without_database = True

        cluster.start()
        wait_for(lambda: http.get("/health/ready").json()["status"] == "ok")
        again = http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"content": "back?", "max_tokens": 2},
        )
        assert again.status_code == 200, again.text
        assert [m["index"] for m in again.json()["messages"]] == [2, 3]
        # The record made during the outage reached the ledger once the database was back.
        assert during in wait_for_records(server, [during])
        messages = http.get(f"/v1/conversations/{conv['id']}/messages").json()["data"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2


def test_postgres_waits_for_db_upgrade(pg_databases: Callable[[], str]) -> None:
    # Postgres is not migrated at start-up unless asked: the service says what to run,
    # and picks the new schema up by itself once `genai-service db upgrade` ran.
    from typer.testing import CliRunner

    from genai_service.cli import app as cli

    url = pg_databases()
    with run_server(database_url=url, n_threads=1) as server, server.http() as http:
        ready = http.get("/health/ready").json()
        assert ready["status"] == "degraded"
        assert "genai-service db upgrade" in ready["database"]["reason"]
        refused = http.post("/v1/conversations", json={})
        assert refused.status_code == 503
        assert "genai-service db upgrade" in refused.json()["error"]["message"]

        assert CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url]).exit_code == 0
        wait_for(lambda: http.get("/health/ready").json()["status"] == "ok")
        assert http.post("/v1/conversations", json={}).status_code == 200
