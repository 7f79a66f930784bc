"""The repository layer: everything the API asks of the database, one function per question.

Every question about a conversation names its owner (the caller's principal): a conversation
of another owner is answered exactly as one that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from genai_service.storage.database import Database
from genai_service.storage.models import (
    ANONYMOUS,
    CompletionRecord,
    Conversation,
    Message,
    utcnow,
)


class ConversationNotFound(LookupError):
    pass


class InvalidCursor(ValueError):
    pass


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class ConversationLocks:
    """Holds a conversation for one turn: read the history, generate, store the turn.

    Two locks, taken in this order:
    - an asyncio lock per conversation id, so the posts of this process queue here (FIFO)
      and hold at most one database connection per conversation;
    - on Postgres, a transaction-scoped advisory lock on a hash of the id, held on its own
      connection until the turn is stored, so posts on other replicas wait too. An advisory
      lock, not SELECT ... FOR UPDATE: the turn is appended by another transaction
      (`append_messages`), whose UPDATE of the conversation row a row lock would block.
    The embedded SQLite has one writer process by design: the asyncio lock is all it needs.

    So every reply is built from the turns committed before it, on any replica.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, conversation_id: str) -> asyncio.Lock:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[conversation_id] = lock
        return lock

    async def acquire(self, db: Database, conversation_id: str) -> Callable[[], None]:
        """Wait for the conversation; returns its release (synchronous, idempotent)."""
        lock = self.get(conversation_id)
        await lock.acquire()
        try:
            held = await _advisory_lock(db, conversation_id) if db.dialect == "postgresql" else None
        except BaseException:
            lock.release()
            raise
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if held is not None:
                # Ending its transaction releases the advisory lock; a task, as the callers
                # (a stream's close hook among them) are synchronous.
                task = asyncio.get_running_loop().create_task(_close(held))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            lock.release()

        return release


def advisory_key(conversation_id: str) -> int:
    """The conversation's advisory lock key: Postgres takes a signed 64-bit integer."""
    digest = hashlib.blake2b(conversation_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _advisory_lock(db: Database, conversation_id: str) -> AsyncConnection:
    # pg_try_ in a loop rather than the blocking pg_advisory_xact_lock: a wait may outlast the
    # driver's command timeout (a long generation on another replica), and a client that
    # leaves cancels a sleep cleanly.
    connection = await db.engine.connect()
    try:
        await connection.begin()
        query = text("SELECT pg_try_advisory_xact_lock(:key)")
        key = advisory_key(conversation_id)
        delay = 0.005
        while not await connection.scalar(query, {"key": key}):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
    except BaseException:
        await _close(connection)
        raise
    return connection


async def _close(connection: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()  # rolls the transaction back: the advisory lock goes with it


async def create_conversation(
    db: Database,
    *,
    owner: str = ANONYMOUS,
    system_prompt: str | None = None,
    metadata: dict[str, Any] | None = None,
    model: str | None = None,
) -> Conversation:
    conversation = Conversation(
        id=new_conversation_id(),
        owner=owner,
        system_prompt=system_prompt,
        metadata_=metadata or {},
        model=model,
        message_count=0,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    async with db.session() as session, session.begin():
        session.add(conversation)
    return conversation


async def get_conversation(
    db: Database, conversation_id: str, owner: str = ANONYMOUS
) -> Conversation | None:
    """The conversation if `owner` owns it; None if it does not exist or is someone else's."""
    async with db.session() as session:
        return await session.scalar(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.owner == owner
            )
        )


async def delete_conversation(db: Database, conversation_id: str, owner: str = ANONYMOUS) -> bool:
    async with db.session() as session, session.begin():
        result = await session.execute(
            delete(Conversation).where(
                Conversation.id == conversation_id, Conversation.owner == owner
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        # SQLite only cascades with foreign_keys on, so do not rely on it.
        await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
    return True


async def list_conversations(
    db: Database,
    owner: str,
    *,
    limit: int = 20,
    after: str | None = None,
    order: str = "desc",
) -> tuple[list[Conversation], bool]:
    """A page of `owner`'s conversations by creation time, and whether more follow.

    `after` is the last id of the page before; it must be one of `owner`'s conversations.
    """
    ascending = order == "asc"
    c = Conversation
    async with db.session() as session:
        query = select(c).where(c.owner == owner)
        if after is not None:
            cursor = await session.scalar(select(c).where(c.id == after, c.owner == owner))
            if cursor is None:
                raise InvalidCursor(after)
            if ascending:
                query = query.where(
                    or_(
                        c.created_at > cursor.created_at,
                        and_(c.created_at == cursor.created_at, c.id > cursor.id),
                    )
                )
            else:
                query = query.where(
                    or_(
                        c.created_at < cursor.created_at,
                        and_(c.created_at == cursor.created_at, c.id < cursor.id),
                    )
                )
        if ascending:
            query = query.order_by(c.created_at.asc(), c.id.asc())
        else:
            query = query.order_by(c.created_at.desc(), c.id.desc())
        rows = (await session.scalars(query.limit(limit + 1))).all()
    return list(rows[:limit]), len(rows) > limit


async def history(db: Database, conversation_id: str, limit: int = 2000) -> list[Message]:
    """The newest `limit` messages, oldest first."""
    async with db.session() as session:
        rows = await session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.seq.desc())
            .limit(limit)
        )
        return list(reversed(rows.all()))


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: str
    tokens: int | None = None


async def append_messages(
    db: Database, conversation_id: str, messages: Sequence[NewMessage]
) -> list[Message]:
    """Append messages in one transaction: all of them, in order, or none.

    The UPDATE comes first: it takes the conversation's row lock (Postgres) or the write
    lock (SQLite) before anything is read, and hands out the sequence numbers.
    """
    n = len(messages)
    async with db.session() as session, session.begin():
        result = await session.execute(
            update(Conversation.__table__)
            .where(Conversation.__table__.c.id == conversation_id)
            .values(message_count=Conversation.__table__.c.message_count + n, updated_at=utcnow())
            .returning(Conversation.__table__.c.message_count)
        )
        row = result.first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        first_seq = row[0] - n
        created = utcnow()
        rows = [
            Message(
                id=new_message_id(),
                conversation_id=conversation_id,
                seq=first_seq + i,
                role=m.role,
                content=m.content,
                tokens=m.tokens,
                created_at=created,
            )
            for i, m in enumerate(messages)
        ]
        session.add_all(rows)
    return rows


async def list_messages(
    db: Database,
    conversation_id: str,
    *,
    limit: int = 20,
    after: str | None = None,
    order: str = "asc",
) -> tuple[list[Message], bool]:
    """A page of messages and whether more follow; `after` is the last id of the page before."""
    ascending = order == "asc"
    async with db.session() as session:
        query = select(Message).where(Message.conversation_id == conversation_id)
        if after is not None:
            seq = await session.scalar(
                select(Message.seq).where(
                    Message.conversation_id == conversation_id, Message.id == after
                )
            )
            if seq is None:
                raise InvalidCursor(after)
            query = query.where(Message.seq > seq if ascending else Message.seq < seq)
        query = query.order_by(Message.seq.asc() if ascending else Message.seq.desc())
        rows = (await session.scalars(query.limit(limit + 1))).all()
    return list(rows[:limit]), len(rows) > limit


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    api_key_id: str | None
    requests: int
    ok: int
    errors: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int


ALL_KEYS: Any = object()  # usage_summary: every key's rows


async def usage_summary(
    db: Database, start: datetime, end: datetime, api_key_id: Any = ALL_KEYS
) -> list[UsageRow]:
    """Requests and tokens per day, model and API key in [start, end) (naive UTC).

    `api_key_id` limits the rows to one key (None: requests made without a key); left out,
    every key's rows are summed.
    """
    r = CompletionRecord
    day = func.date(r.created_at)

    def count_status(status: str) -> Any:
        return func.sum(case((r.status == status, 1), else_=0))

    query = (
        select(
            day,
            r.model,
            r.api_key_id,
            func.count(),
            count_status("ok"),
            count_status("error"),
            count_status("cancelled"),
            func.sum(r.prompt_tokens),
            func.sum(r.completion_tokens),
        )
        .where(r.created_at >= start, r.created_at < end)
        .group_by(day, r.model, r.api_key_id)
    )
    if api_key_id is None:
        query = query.where(r.api_key_id.is_(None))
    elif api_key_id is not ALL_KEYS:
        query = query.where(r.api_key_id == api_key_id)
    async with db.session() as session:
        result = await session.execute(query)
        rows = [
            UsageRow(str(d), m, k, int(n), int(ok), int(err), int(cc), int(p or 0), int(c or 0))
            for d, m, k, n, ok, err, cc, p, c in result.all()
        ]
    return sorted(rows, key=lambda u: (u.day, u.model, u.api_key_id or ""))
