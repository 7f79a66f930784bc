"""API keys kept in the database, and the quota counters that go with them.

A key is `gsk_` and 43 URL-safe characters (256 random bits). It is shown once, when made;
the database keeps its SHA-256, and a presented key is found by its hash and checked again
with `hmac.compare_digest`. Keys are revoked, never deleted, so a key id in the usage ledger
always names a key.

Quotas are fixed windows in UTC: requests per minute, tokens per day. Request counts go up on
the request path (one upsert); token counts go up when the usage ledger writes a generation's
record, in the same transaction, so a record and its tokens are counted together or not at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from genai_service.storage.database import Database
from genai_service.storage.models import ApiKey, ApiKeyCounter, utcnow

KEY_PREFIX = "gsk_"
KEY_ID_PREFIX = "key_"
SCOPES = ("admin", "user")
Scope = Literal["admin", "user"]
PREFIX_CHARS = 12  # shown in listings: `gsk_` and 8 random characters


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def minute_window(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def day_window(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def is_active(key: ApiKey, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


async def create_key(
    db: Database,
    *,
    name: str,
    scope: Scope = "user",
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    tokens_per_day: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key: its row and the key itself, which is not kept anywhere."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    secret = generate_key()
    row = ApiKey(
        id=KEY_ID_PREFIX + secrets.token_hex(6),
        name=name,
        prefix=secret[:PREFIX_CHARS],
        key_hash=hash_key(secret),
        scope=scope,
        created_at=utcnow(),
        expires_at=expires_at,
        revoked_at=None,
        requests_per_minute=requests_per_minute,
        tokens_per_day=tokens_per_day,
    )
    async with db.session() as session, session.begin():
        session.add(row)
    return row, secret


async def list_keys(db: Database) -> list[ApiKey]:
    async with db.session() as session:
        rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
        return list(rows.all())


async def get_key(db: Database, key_id: str) -> ApiKey | None:
    async with db.session() as session:
        return await session.get(ApiKey, key_id)


async def revoke_key(db: Database, key_id: str) -> ApiKey | None:
    """Revoke a key (a second revoke keeps the first time); None if there is no such key."""
    async with db.session() as session, session.begin():
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return await session.get(ApiKey, key_id, populate_existing=True)


async def find_key(db: Database, presented: bytes) -> ApiKey | None:
    """The key row for a presented key, active or not; None if it is no key of ours."""
    digest = hash_key(presented)
    async with db.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The index found the row by hash; compare again in constant time all the same.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row


async def any_keys(db: Database) -> bool:
    """Whether any key was ever made here (revoked ones count: revoking the last key must not
    turn authentication off)."""
    async with db.session() as session:
        return await session.scalar(select(ApiKey.id).limit(1)) is not None


def _upsert(dialect: str) -> Any:
    return (postgresql if dialect == "postgresql" else sqlite).insert(ApiKeyCounter.__table__)


async def count_request(db: Database, key_id: str, now: datetime) -> int:
    """Count one request in `now`'s minute; returns the minute's count including it."""
    c = ApiKeyCounter.__table__.c
    stmt = _upsert(db.dialect).values(
        key_id=key_id, period="minute", window_start=minute_window(now), requests=1, tokens=0
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key_id", "period", "window_start"],
        set_={"requests": c.requests + 1},
    ).returning(c.requests)
    async with db.session() as session, session.begin():
        return int((await session.execute(stmt)).scalar_one())


async def tokens_used(db: Database, key_id: str, now: datetime) -> int:
    c = ApiKeyCounter
    async with db.session() as session:
        used = await session.scalar(
            select(c.tokens).where(
                c.key_id == key_id, c.period == "day", c.window_start == day_window(now)
            )
        )
    return int(used or 0)


async def add_tokens(
    session: AsyncSession, dialect: str, usage: Iterable[tuple[str, datetime, int]]
) -> None:
    """Add (key id, when, tokens) to the keys' daily counters, inside the caller's transaction.

    Counters of past windows are dropped on the way, so the table stays small.
    """
    c = ApiKeyCounter.__table__.c
    totals: dict[tuple[str, datetime], int] = {}
    for key_id, when, tokens in usage:
        totals[(key_id, day_window(when))] = totals.get((key_id, day_window(when)), 0) + tokens
    if not totals:
        # Nothing keyed in this batch (authentication off, or only env keys): no counter to
        # touch, and the old ones go with the next keyed batch (a DELETE per request otherwise).
        return
    for (key_id, day), tokens in sorted(totals.items()):
        stmt = _upsert(dialect).values(
            key_id=key_id, period="day", window_start=day, requests=0, tokens=tokens
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["key_id", "period", "window_start"],
                set_={"tokens": c.tokens + tokens},
            )
        )
    now = utcnow()
    await session.execute(
        delete(ApiKeyCounter).where(
            or_(
                and_(c.period == "minute", c.window_start < now - timedelta(minutes=5)),
                and_(c.period == "day", c.window_start < now - timedelta(days=2)),
            )
        )
    )


class KeyPresence:
    """Whether the database holds any key, asked at most every `ttl` seconds.

    With no API_KEYS, authentication is on as soon as one key exists in the database. Keys
    are never deleted, so once seen the answer stays yes. While the database cannot be asked,
    the last answer holds; `None` means it was never answered (the caller then fails closed).
    """

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self.known: bool | None = None
        self._checked_at = -float("inf")

    def saw_key(self) -> None:
        self.known = True

    async def any(self, db: Database) -> bool | None:
        if self.known or time.monotonic() - self._checked_at < self.ttl:
            return self.known
        try:
            self.known = await any_keys(db)
        except Exception:
            return self.known
        self._checked_at = time.monotonic()
        return self.known
