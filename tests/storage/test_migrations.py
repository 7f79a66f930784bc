"""Migrations upgrade an empty database, match the models, and downgrade cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from genai_service.cli import app as cli
from genai_service.storage import keys, migrate
from genai_service.storage import repository as repo
from genai_service.storage.database import Database, make_engine
from genai_service.storage.models import Base

TABLES = {"conversations", "messages", "completion_records", "api_keys", "api_key_counters"}


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _model_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_then_downgrade(empty_url: str) -> None:
    assert not (await _tables(empty_url)) & TABLES

    await migrate.upgrade_async(empty_url)
    assert await _tables(empty_url) >= TABLES
    engine = make_engine(empty_url)
    assert await migrate.current_revision(engine) == migrate.head_revision()
    await engine.dispose()
    # The migration scripts build exactly what the models describe.
    assert await _model_diff(empty_url) == []

    await migrate.downgrade_async(empty_url, "base")
    assert not (await _tables(empty_url)) & TABLES

    await migrate.upgrade_async(empty_url)  # and back up again
    assert await _tables(empty_url) >= TABLES


def test_cli_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'genai.db'}"
    runner = CliRunner()
    before = runner.invoke(cli, ["db", "current", "--database-url", url])
    assert before.exit_code == 0 and "current: empty" in before.output
    upgraded = runner.invoke(cli, ["db", "upgrade", "--database-url", url])
    assert upgraded.exit_code == 0, upgraded.output
    after = runner.invoke(cli, ["db", "current", "--database-url", url])
    assert f"current: {migrate.head_revision()}" in after.output


def test_cli_db_upgrade_reports_unreachable_database() -> None:
    result = CliRunner().invoke(
        cli, ["db", "upgrade", "--database-url", "postgresql+asyncpg://u:secret@127.0.0.1:1/x"]
    )
    assert result.exit_code == 1
    assert "upgrade failed" in result.output
    assert "secret" not in result.output


async def _execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                result = await conn.execute(text(statement))
                if result.returns_rows:
                    rows = [tuple(r) for r in result.all()]
            return rows
    finally:
        await engine.dispose()


async def test_owner_migration_moves_an_old_database_forward(empty_url: str) -> None:
    """0001 → 0002: existing conversations go to `anonymous`, messages are kept; and back."""
    await migrate.upgrade_async(empty_url, "0001")
    await _execute(
        empty_url,
        "INSERT INTO conversations (id, created_at, updated_at, metadata, message_count) "
        "VALUES ('conv_old', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}', 1)",
        "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) "
        "VALUES ('msg_old', 'conv_old', 0, 'user', 'hi', '2026-01-01 00:00:00')",
    )
    await migrate.upgrade_async(empty_url)
    assert await _execute(empty_url, "SELECT id, owner FROM conversations") == [
        ("conv_old", "anonymous")
    ]
    db = Database(empty_url, make_engine(empty_url))
    try:
        assert await repo.get_conversation(db, "conv_old", "anonymous") is not None
        assert await repo.get_conversation(db, "conv_old", "0123abcd") is None
    finally:
        await db.close()
    await migrate.downgrade_async(empty_url, "0001")
    assert await _execute(empty_url, "SELECT count(*) FROM messages") == [(1,)]
    assert await _execute(empty_url, "SELECT id FROM conversations") == [("conv_old",)]


async def test_keys_migration_moves_an_old_database_forward(empty_url: str) -> None:
    """0002 → 0003: the key tables appear, the rows before stay and still count; and back."""
    await migrate.upgrade_async(empty_url, "0002")
    await _execute(
        empty_url,
        "INSERT INTO conversations (id, owner, created_at, updated_at, metadata, message_count) "
        "VALUES ('conv_old', '0123abcd', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}', 0)",
        "INSERT INTO completion_records (id, request_id, endpoint, model, engine, "
        "prompt_tokens, completion_tokens, latency_ms, status, api_key_id, created_at) "
        "VALUES ('r1', 'r1', '/v1/completions', 'm', 'e', 1, 2, 3.0, 'ok', '0123abcd', "
        "'2026-01-01 00:00:00')",
    )
    await migrate.upgrade_async(empty_url)
    assert await _execute(empty_url, "SELECT count(*) FROM api_keys") == [(0,)]
    db = Database(empty_url, make_engine(empty_url))
    try:
        assert await repo.get_conversation(db, "conv_old", "0123abcd") is not None
        _, secret = await keys.create_key(db, name="after the upgrade")
        assert await keys.find_key(db, secret.encode()) is not None
    finally:
        await db.close()
    await migrate.downgrade_async(empty_url, "0002")
    assert "api_keys" not in await _tables(empty_url)
    assert await _execute(empty_url, "SELECT count(*) FROM completion_records") == [(1,)]
