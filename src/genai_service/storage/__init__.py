"""Persistence: conversations, messages, the usage ledger and API keys (SQLAlchemy 2 async + Alembic).

`open_storage(settings)` is all the app's lifespan calls: it builds the engine, migrates
when it should (always for the embedded SQLite, for Postgres only with AUTO_MIGRATE), and
starts the ledger writer and the health monitor. Nothing here blocks start-up on a
database that is down: the service comes up and says so on /health/ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from genai_service.settings import Settings
from genai_service.storage.database import Database, describe_error, is_sqlite, make_engine
from genai_service.storage.keys import KeyPresence
from genai_service.storage.ledger import LedgerWriter, UsageRecord
from genai_service.storage.repository import ConversationLocks

__all__ = ["Database", "Storage", "UsageRecord", "open_storage"]

log = structlog.get_logger(__name__)


@dataclass
class Storage:
    db: Database
    ledger: LedgerWriter
    locks: ConversationLocks = field(default_factory=ConversationLocks)
    key_presence: KeyPresence = field(default_factory=KeyPresence)
    _startup: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._startup is not None:
            self._startup.cancel()
            with contextlib.suppress(BaseException):
                await self._startup
        await self.ledger.close()
        await self.db.close()


async def _prepare_once(db: Database, migrate: bool) -> bool:
    from genai_service.storage import migrate as migrations

    try:
        if migrate:
            await migrations.upgrade_async(db.url)
            log.info("database_migrated", dialect=db.dialect)
        current = await migrations.current_revision(db.engine)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        db.mark_down(exc)
        log.warning("database_not_ready", error=describe_error(exc, db.url))
        return False
    head = migrations.head_revision()
    db.schema_ready = current == head
    db.mark_up()
    if not db.schema_ready:
        if not db.schema_reason:  # say it once, not every poll
            log.error("database_schema_outdated", current=current, head=head)
        db.schema_reason = (
            f"database schema is at {current or 'empty'}, expected {head}: "
            "run `genai-service db upgrade` (or set AUTO_MIGRATE=true)"
        )
    return True


async def _prepare(db: Database, migrate: bool) -> None:
    # Retry until the database answers (a Postgres container may start after the service)
    # and its schema is current (an operator may run `genai-service db upgrade` meanwhile).
    delay = 0.5
    while not (await _prepare_once(db, migrate) and db.schema_ready):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def worker_count(argv: list[str] | None = None) -> int:
    """How many worker processes the server was asked for: `--workers N` / `-w N` on the
    command line, or WEB_CONCURRENCY when the program is one that reads it (gunicorn, the
    uvicorn CLI; `genai-service serve` is one process, whatever a platform sets there)."""
    args = sys.argv if argv is None else argv
    program = Path(args[0]).name if args else ""
    value = os.environ.get("WEB_CONCURRENCY", "") if program in ("gunicorn", "uvicorn") else ""
    for i, arg in enumerate(args):
        if arg in ("--workers", "-w") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--workers="):
            value = arg.split("=", 1)[1]
    return int(value) if value.strip().isdigit() else 1


async def open_storage(settings: Settings) -> Storage:
    url = settings.resolved_database_url
    engine = make_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        connect_timeout=settings.db_connect_timeout,
    )
    db = Database(url, engine)
    storage = Storage(db=db, ledger=LedgerWriter(db))
    workers = worker_count()
    if is_sqlite(url) and workers > 1:
        # Each worker process would hold its own conversation locks over one SQLite file:
        # appends stay atomic, but a reply could miss a turn another worker is writing.
        log.warning(
            "sqlite_several_workers",
            workers=workers,
            message=f"{workers} worker processes share the embedded SQLite database; it is "
            "made for one process. Run one worker (several replicas: set DATABASE_URL to "
            "Postgres, where conversations are locked across processes).",
        )
    migrate = settings.migrate_at_startup
    # A local SQLite file migrates in milliseconds: do it before serving. Otherwise (or if
    # that failed) keep trying in the background; routes answer 503 until it worked.
    if not (is_sqlite(url) and await _prepare_once(db, migrate) and db.schema_ready):
        storage._startup = asyncio.create_task(_prepare(db, migrate))
    storage.ledger.start()
    db.start_monitor()
    return storage
