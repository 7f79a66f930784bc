"""Postgres for the tests (a pytest plugin, loaded by tests/conftest.py).

TEST_DATABASE_URL (`postgresql+asyncpg://user:pw@host/db`, a role that may CREATE DATABASE)
points the suite at an existing server; without it a throwaway cluster is made with initdb
and pg_ctl on a free loopback port. Without either the Postgres tests skip, which fails
the run under GENAI_STRICT=1 (.ci/run).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from genai_service.storage import pgcluster
from genai_service.storage.pgcluster import PgCluster


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop's thread."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    """The throwaway cluster, or None when TEST_DATABASE_URL names a server."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    reason = pgcluster.available()
    if reason:
        pytest.skip(f"no Postgres for the tests: {reason}")
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_databases(pg_cluster: PgCluster | None) -> Callable[[], str]:
    """Makes a new, empty database and returns its URL."""
    admin_url = os.environ.get("TEST_DATABASE_URL") or (
        pg_cluster.url("postgres") if pg_cluster else ""
    )

    def make() -> str:
        name = f"genai_test_{uuid.uuid4().hex[:12]}"
        run_async(_create_database(admin_url, name))
        return make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    return make


KEY_A, KEY_B = "sk-test-key-a", "sk-test-key-b"
KEY_ADMIN = "sk-test-key-admin"  # ADMIN_API_KEYS: key management, every key's usage


@pytest.fixture(scope="session")
def pg_server(pg_databases: Callable[[], str]) -> Iterator[Any]:
    """The service on Postgres (migrated at start-up), with two API keys and an admin key."""
    from tests.conftest import run_server

    with run_server(
        database_url=pg_databases(),
        auto_migrate=True,
        api_keys=[KEY_A, KEY_B],
        admin_api_keys=[KEY_ADMIN],
        n_threads=1,
    ) as s:
        yield s
