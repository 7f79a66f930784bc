"""The database handle: engine and sessions, health, and recovery after an outage.

SQLAlchemy's pool with `pool_pre_ping` replaces dead connections on checkout, so once the
database is back the next request simply works; `healthy` only tells probes and the
completion guard what the last contact with the database said.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = structlog.get_logger(__name__)

# Errors that mean "cannot reach the database", as opposed to a bug in a query.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def describe_error(exc: BaseException, url: str) -> str:
    """The first line of an error, for a log line: short, and never holding the URL's password.

    Drivers name hosts and users in their errors but not passwords; this makes sure of it.
    """
    line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password and str(password) in line:
        line = line.replace(str(password), "***")
    return line


def parse_database_url(url: str) -> Any:
    """`make_url`, with an error that says what is wrong without repeating the URL (and so
    its password)."""
    try:
        return make_url(url)
    except Exception as exc:
        what = "its port is not a number" if "int()" in str(exc) else "it is not a URL"
        raise ValueError(f"DATABASE_URL cannot be parsed: {what}") from None


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    # asyncpg reports a dropped connection as a DBAPIError whose driver error is a
    # ConnectionDoesNotExistError / CannotConnectNowError; `connection_invalidated` marks it.
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# Sync spellings of a URL -> the async driver to use instead.
SYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    pool_recycle: int = 1800,
    connect_timeout: float = 5.0,
) -> AsyncEngine:
    parsed = parse_database_url(url)
    if parsed.drivername in SYNC_DRIVERS:
        # SQLAlchemy would say only "the loaded 'pysqlite' is not async".
        raise ValueError(
            f"'{parsed.drivername}://' is a synchronous driver: use "
            f"'{SYNC_DRIVERS[parsed.drivername]}://' (DATABASE_URL accepts both spellings)"
        )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            pool_pre_ping=True,
            connect_args={"timeout": connect_timeout},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=True,
        connect_args={"timeout": connect_timeout, "command_timeout": 30},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue up
    # instead of failing with "database is locked"; cascades need foreign_keys on.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.healthy = False
        self.reason = "not checked yet"
        self.schema_ready = False
        self.schema_reason = ""  # why the schema is not usable, while it is not
        self._checked_at = 0.0
        self._monitor: asyncio.Task[None] | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose failures update `healthy` (and whose transaction rolls back)."""
        try:
            async with self.sessions() as session:
                yield session
        except BaseException as exc:
            if is_unavailable(exc):
                self.mark_down(exc)
            raise
        else:
            self.mark_up()

    def mark_down(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("database_unavailable", error=describe_error(exc, self.url))
        self.healthy = False
        self.reason = f"database unavailable: {type(exc).__name__}"
        self._checked_at = time.monotonic()

    def mark_up(self) -> None:
        if not self.healthy:
            log.info("database_available")
        self.healthy, self.reason = True, "ok"
        self._checked_at = time.monotonic()

    async def ping(self, max_wait: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(max_wait), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            self.mark_down(exc)
            return False
        self.mark_up()
        return True

    async def check(self, max_age: float = 1.0) -> bool:
        """Ping unless the last contact is recent (probes may call this often)."""
        if time.monotonic() - self._checked_at > max_age:
            await self.ping()
        return self.healthy

    def start_monitor(self, interval: float = 2.0) -> None:
        # While down, keep pinging so `healthy` turns green again without any traffic.
        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                if not self.healthy:
                    await self.ping()

        self._monitor = asyncio.create_task(watch())

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(BaseException):
                await self._monitor
        await self.engine.dispose()
