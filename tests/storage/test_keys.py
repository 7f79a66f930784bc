"""API keys and quota counters in the database, on SQLite and Postgres."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select

from genai_service.storage import keys
from genai_service.storage.database import Database
from genai_service.storage.ledger import UsageRecord, insert_records
from genai_service.storage.models import ApiKey, utcnow


async def test_keys_are_stored_hashed_and_found_by_hash(db: Database) -> None:
    assert not await keys.any_keys(db)
    row, secret = await keys.create_key(db, name="ci", scope="admin", tokens_per_day=10)
    async with db.session() as session:
        stored = (await session.scalars(select(ApiKey))).one()
    # Nothing stored holds the key: only its SHA-256 and a short prefix.
    assert secret not in repr(vars(stored)) and stored.key_hash == keys.hash_key(secret)
    assert stored.prefix == secret[:12] and stored.scope == "admin"
    assert (await keys.find_key(db, secret.encode())).id == row.id  # type: ignore[union-attr]
    assert await keys.find_key(db, secret[:-1].encode()) is None
    assert await keys.any_keys(db)

    first = await keys.revoke_key(db, row.id)
    assert first is not None and first.revoked_at is not None
    again = await keys.revoke_key(db, row.id)
    assert again is not None and again.revoked_at == first.revoked_at  # the first time stays
    assert await keys.revoke_key(db, "key_nope") is None
    assert await keys.any_keys(db)  # a revoked key still turns authentication on


async def test_request_counters_are_per_minute(db: Database) -> None:
    now = utcnow().replace(second=10)
    assert [await keys.count_request(db, "key_a", now) for _ in range(3)] == [1, 2, 3]
    assert await keys.count_request(db, "key_b", now) == 1
    assert await keys.count_request(db, "key_a", now + timedelta(minutes=1)) == 1


async def test_ledger_counts_tokens_once(db: Database) -> None:
    record = UsageRecord(
        request_id="r1",
        endpoint="/v1/chat/completions",
        model="m",
        engine="e",
        prompt_tokens=7,
        completion_tokens=3,
        ttft_ms=None,
        latency_ms=1.0,
        status="ok",
        api_key_id="key_a",
    )
    anonymous = replace(record, id="anon", api_key_id=None)
    await insert_records(db, [record, anonymous])
    # A batch retried after an ambiguous failure is skipped, and so are its tokens.
    await insert_records(db, [record])
    now = utcnow()
    assert await keys.tokens_used(db, "key_a", now) == 10
    assert await keys.tokens_used(db, "key_a", now + timedelta(days=1)) == 0
