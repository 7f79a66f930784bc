"""How many usage records per second the ledger sustains, on SQLite and on Postgres.

    .venv/bin/python bench/ledger.py [--records 20000] [--single 1000]

Two numbers per database, side by side:
  * ledger:  the service's path: records queued by LedgerWriter and inserted in batches
             (one transaction per batch of up to 500), timed until all are committed;
  * single:  the reference: one INSERT + COMMIT per record, one after another (what a
             naive per-request write would sustain).
SQLite is the embedded default (a file in a temp dir, WAL, synchronous=NORMAL). Postgres is
BENCH_DATABASE_URL if set, else a throwaway initdb cluster with durable commits (fsync on).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid

from sqlalchemy.engine import make_url

from genai_service.storage import migrate
from genai_service.storage.database import Database, make_engine
from genai_service.storage.ledger import LedgerWriter, UsageRecord, insert_records


def record(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        endpoint="/v1/chat/completions",
        model="SmolLM2-135M-Instruct",
        engine="llama.cpp",
        prompt_tokens=30 + i % 50,
        completion_tokens=1 + i % 200,
        ttft_ms=12.5,
        latency_ms=250.0,
        status="ok",
        api_key_id="a1b2c3d4",
    )


async def measure(url: str, n_ledger: int, n_single: int) -> tuple[float, float]:
    await migrate.upgrade_async(url)
    db = Database(url, make_engine(url))
    try:
        # Reference: one transaction per record.
        start = time.perf_counter()
        for i in range(n_single):
            await insert_records(db, [record(i)])
        single = n_single / (time.perf_counter() - start)

        writer = LedgerWriter(db)
        writer.start()
        records = [record(i) for i in range(n_ledger)]
        start = time.perf_counter()
        for item in records:
            writer.submit(item)
        assert await writer.flush(300), "ledger did not drain"
        ledger = n_ledger / (time.perf_counter() - start)
        assert writer.written == n_ledger
        await writer.close()
        return ledger, single
    finally:
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records through the ledger")
    parser.add_argument("--single", type=int, default=1_000, help="one-per-transaction inserts")
    args = parser.parse_args()

    results: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        results.append(("sqlite", *asyncio.run(measure(url, args.records, args.single))))

    pg_url = os.environ.get("BENCH_DATABASE_URL")
    if pg_url:
        results.append(("postgres", *asyncio.run(measure(pg_url, args.records, args.single))))
    else:
        from genai_service.storage.pgcluster import PgCluster, available

        reason = available()
        if reason:
            print(f"postgres: skipped ({reason}); set BENCH_DATABASE_URL", file=sys.stderr)
        else:
            with PgCluster(fsync=True) as cluster:
                url = cluster.create_database("bench")
                results.append(("postgres", *asyncio.run(measure(url, args.records, args.single))))
                pg_url = url

    print(f"usage ledger writes/s ({args.records} batched, {args.single} single)")
    print(f"{'database':<10} {'ledger':>10} {'single':>10} {'ratio':>7}")
    for name, ledger, single in results:
        print(f"{name:<10} {ledger:>10.0f} {single:>10.0f} {ledger / single:>6.1f}x")
    if pg_url:
        print(f"(postgres: {make_url(pg_url).render_as_string(hide_password=True)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
