"""The repository and the usage ledger on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from genai_service.storage import repository as repo
from genai_service.storage.database import Database, make_engine
from genai_service.storage.ledger import LedgerWriter, UsageRecord, insert_records
from genai_service.storage.models import CompletionRecord, Message, utcnow


async def test_conversation_lifecycle_and_pagination(db: Database) -> None:
    conversation = await repo.create_conversation(
        db, system_prompt="Be brief.", metadata={"team": "a"}
    )
    loaded = await repo.get_conversation(db, conversation.id)
    assert loaded is not None and loaded.system_prompt == "Be brief."
    assert loaded.metadata_ == {"team": "a"}

    for i in range(5):
        await repo.append_messages(
            db,
            conversation.id,
            [repo.NewMessage("user", f"q{i}"), repo.NewMessage("assistant", f"a{i}", 3)],
        )
    page, more = await repo.list_messages(db, conversation.id, limit=4)
    assert [m.content for m in page] == ["q0", "a0", "q1", "a1"] and more
    page2, more2 = await repo.list_messages(db, conversation.id, limit=4, after=page[-1].id)
    assert [m.content for m in page2] == ["q2", "a2", "q3", "a3"] and more2
    last, done = await repo.list_messages(db, conversation.id, limit=4, after=page2[-1].id)
    assert [m.content for m in last] == ["q4", "a4"] and not done
    newest, _ = await repo.list_messages(db, conversation.id, limit=3, order="desc")
    assert [m.seq for m in newest] == [9, 8, 7]
    with pytest.raises(repo.InvalidCursor):
        await repo.list_messages(db, conversation.id, after="msg_nope")

    assert [m.content for m in await repo.history(db, conversation.id, limit=3)] == [
        "a3",
        "q4",
        "a4",
    ]
    assert await repo.delete_conversation(db, conversation.id)
    assert await repo.get_conversation(db, conversation.id) is None
    assert await repo.history(db, conversation.id) == []
    assert not await repo.delete_conversation(db, conversation.id)


async def test_append_is_all_or_nothing(db: Database) -> None:
    conversation = await repo.create_conversation(db)
    await repo.append_messages(db, conversation.id, [repo.NewMessage("user", "kept")])
    # The second message violates NOT NULL: the first of the pair must not stay behind.
    broken = [repo.NewMessage("user", "half"), repo.NewMessage("assistant", None)]  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        await repo.append_messages(db, conversation.id, broken)
    stored = await repo.history(db, conversation.id)
    assert [m.content for m in stored] == ["kept"]
    fresh = await repo.get_conversation(db, conversation.id)
    assert fresh is not None and fresh.message_count == 1
    with pytest.raises(repo.ConversationNotFound):
        await repo.append_messages(db, "conv_missing", [repo.NewMessage("user", "x")])


async def test_concurrent_appends_without_the_process_lock(db: Database) -> None:
    # As if from many processes: only the database orders them. None lost, no gaps.
    conversation = await repo.create_conversation(db)

    async def post(i: int) -> None:
        await repo.append_messages(
            db,
            conversation.id,
            [repo.NewMessage("user", f"u{i}"), repo.NewMessage("assistant", f"r{i}")],
        )

    await asyncio.gather(*(post(i) for i in range(30)))
    stored = await repo.history(db, conversation.id)
    assert [m.seq for m in stored] == list(range(60))
    for user, reply in zip(stored[::2], stored[1::2], strict=True):
        assert user.role == "user" and reply.role == "assistant"
        assert reply.content == "r" + user.content[1:]  # each pair stays together
    assert {m.content for m in stored[::2]} == {f"u{i}" for i in range(30)}


async def test_turn_lock_serialises_read_generate_append(db: Database) -> None:
    """A turn (read the history, "generate", append) holds the conversation: every reply is
    built from all the turns committed before it. On Postgres the posts come through two lock
    managers and two connection pools, as from two replicas; SQLite is one process."""
    conversation = await repo.create_conversation(db)
    replicas = [(repo.ConversationLocks(), db)]
    if db.dialect == "postgresql":
        other = Database(db.url, make_engine(db.url))
        replicas.append((repo.ConversationLocks(), other))

    async def post(i: int) -> None:
        locks, database = replicas[i % len(replicas)]
        release = await locks.acquire(database, conversation.id)
        try:
            seen = len(await repo.history(database, conversation.id))
            for _ in range(3):
                await asyncio.sleep(0)  # the generation: other posts get to run meanwhile
            await repo.append_messages(
                database,
                conversation.id,
                [repo.NewMessage("user", f"u{i}"), repo.NewMessage("assistant", f"saw {seen}")],
            )
        finally:
            release()

    try:
        await asyncio.gather(*(post(i) for i in range(20)))
    finally:
        for _, database in replicas[1:]:
            await database.close()
    stored = await repo.history(db, conversation.id)
    # Each reply saw exactly the messages before its own user turn.
    assert [m.content for m in stored[1::2]] == [f"saw {n}" for n in range(0, 40, 2)]


def test_advisory_key_is_a_signed_64_bit_integer() -> None:
    keys = {repo.advisory_key(f"conv_{i}") for i in range(1000)}
    assert len(keys) == 1000 and all(-(2**63) <= key < 2**63 for key in keys)
    assert repo.advisory_key("conv_1") == repo.advisory_key("conv_1")


def _record(**overrides: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": "req",
        "endpoint": "/v1/chat/completions",
        "model": "m1",
        "engine": "llama.cpp",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "ttft_ms": 12.5,
        "latency_ms": 40.0,
        "status": "ok",
        "api_key_id": "k1",
    }
    values.update(overrides)
    return UsageRecord(**values)  # type: ignore[arg-type]


async def test_ledger_batches_and_usage_summary(db: Database) -> None:
    writer = LedgerWriter(db, batch_size=100)
    writer.start()
    yesterday = utcnow() - timedelta(days=1)
    for i in range(250):
        writer.submit(_record(request_id=f"r{i}", api_key_id="k1" if i % 2 else "k2"))
    writer.submit(_record(model="m2", status="cancelled", completion_tokens=1))
    writer.submit(_record(model="m2", status="error", created_at=yesterday))
    assert await writer.flush(30)
    assert writer.written == 252
    await writer.close()

    rows = await repo.usage_summary(db, utcnow() - timedelta(days=2), utcnow() + timedelta(1))
    by = {(r.day, r.model, r.api_key_id): r for r in rows}
    today, before = utcnow().date().isoformat(), yesterday.date().isoformat()
    assert by[(today, "m1", "k1")].requests == 125
    assert by[(today, "m1", "k2")].prompt_tokens == 125 * 10
    assert by[(today, "m2", "k1")].cancelled == 1
    assert by[(before, "m2", "k1")].errors == 1
    # The range is [start, end): yesterday's record falls outside today's window.
    start_of_today = datetime.combine(utcnow().date(), datetime.min.time())
    today_only = await repo.usage_summary(db, start_of_today, start_of_today + timedelta(days=1))
    assert sum(r.requests for r in today_only) == 251


async def test_ledger_insert_is_idempotent(db: Database) -> None:
    batch = [_record(request_id=f"r{i}") for i in range(3)]
    await insert_records(db, batch)
    await insert_records(db, batch)  # a retry after an ambiguous failure
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(CompletionRecord)) == 3
        assert await session.scalar(select(func.count()).select_from(Message)) == 0
