"""Every storage test runs twice: on the embedded SQLite and on a real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from genai_service.storage import migrate
from genai_service.storage.database import Database, make_engine


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a new database with no tables yet."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'genai.db'}"
    make: Callable[[], str] = request.getfixturevalue("pg_databases")
    return make()


@pytest.fixture
async def db(empty_url: str) -> AsyncIterator[Database]:
    """A migrated database."""
    await migrate.upgrade_async(empty_url)
    database = Database(empty_url, make_engine(empty_url))
    database.schema_ready = True
    try:
        yield database
    finally:
        await database.close()
