"""The usage ledger writer: records go into a queue and a background task inserts them in
batches, so a generation never waits for the database.

While the database is down the records wait in memory (up to `max_pending`) and are written
when it returns; ids are made here, so a batch retried after an ambiguous failure cannot be
counted twice (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.dialects import postgresql, sqlite

from genai_service.storage.database import Database
from genai_service.storage.keys import add_tokens
from genai_service.storage.models import CompletionRecord, utcnow

log = structlog.get_logger(__name__)

STATUSES = ("ok", "error", "cancelled")


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    endpoint: str
    model: str
    engine: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    latency_ms: float
    status: str
    api_key_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


async def insert_records(db: Database, records: list[UsageRecord]) -> None:
    """Insert a batch in one transaction; rows already there are skipped.

    The keys' daily token counters (quotas) go up in the same transaction, by the rows this
    insert actually wrote, so a retried batch counts its tokens once.
    """
    rows = [asdict(r) for r in records]
    table = CompletionRecord.__table__
    stmt: Any
    if db.dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
    async with db.session() as session, session.begin():
        inserted = set((await session.execute(stmt.returning(table.c.id), rows)).scalars())
        await add_tokens(
            session,
            db.dialect,
            (
                (r.api_key_id, r.created_at, r.prompt_tokens + r.completion_tokens)
                for r in records
                if r.api_key_id is not None and r.id in inserted
            ),
        )


class LedgerWriter:
    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 500,
        max_pending: int = 100_000,
        retry_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.retry_interval = retry_interval
        self._pending: deque[UsageRecord] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, record: UsageRecord) -> None:
        """Queue a record; never blocks, never raises."""
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # the deque drops the oldest; say so once in a while
            if self.dropped % 1000 == 1:
                log.error("usage_records_dropped", dropped=self.dropped)
        self._pending.append(record)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending[i] for i in range(min(self.batch_size, len(self._pending)))]
                try:
                    await insert_records(self.db, batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "usage_write_failed", pending=len(self._pending), error=str(exc)[:200]
                    )
                    await asyncio.sleep(self.retry_interval)
                    continue
                # Compare identities: a full deque may have dropped some of the batch already.
                for record in batch:
                    if self._pending and self._pending[0] is record:
                        self._pending.popleft()
                self.written += len(batch)
            self._idle.set()

    async def flush(self, within: float | None = None) -> bool:
        """Wait until every queued record is written; False if `within` s were not enough."""
        try:
            async with asyncio.timeout(within):
                while self._pending:
                    self._wake.set()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, within: float = 5.0) -> None:
        if not await self.flush(within):
            log.error("usage_records_lost_at_shutdown", pending=len(self._pending))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
