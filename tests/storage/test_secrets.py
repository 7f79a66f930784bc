"""A database password never reaches a log line, an error message or /health/ready."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from genai_service.storage.database import Database, describe_error, make_engine

PASSWORD = "hunter2-SECRET"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://user:{PASSWORD}@db:notaport/x",
        f"postgresql+asyncpg://user:{PASSWORD}@[::1/x",
    ],
)
def test_unparsable_url_error_has_no_password(url: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL cannot be parsed") as caught:
        make_engine(url)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_outage_logs_and_reason_have_no_password() -> None:
    url = f"postgresql+asyncpg://user:{PASSWORD}@127.0.0.1:1/x"
    db = Database(url, make_engine(url))
    try:
        db.healthy = True
        with capture_logs() as logs:
            # A driver that quoted the whole URL back (none known does; this makes sure).
            db.mark_down(OSError(f"cannot connect to {url}"))
            assert not await db.ping(max_wait=2)
        assert logs and PASSWORD not in repr(logs)
        assert PASSWORD not in db.reason
        assert describe_error(RuntimeError(f"x {PASSWORD} y"), url) == "x *** y"
    finally:
        await db.close()


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://user:{PASSWORD}@db/x",
        f"user:{PASSWORD}@db/x",
        f"postgresql+asyncpg://user:{PASSWORD}@db:notaport/x",
    ],
)
def test_start_up_failure_prints_no_password(url: str, tmp_path: object) -> None:
    env = os.environ | {"DATABASE_URL": url, "DATA_DIR": str(tmp_path), "EMBEDDING_MODEL": ""}
    result = subprocess.run(
        [sys.executable, "-m", "genai_service", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DATABASE_URL" in output
    assert PASSWORD not in output
