"""SQLite is made for one process: the service says so when it runs with several workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from genai_service.settings import Settings
from genai_service.storage import open_storage, worker_count


def test_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert worker_count(["gunicorn", "genai_service.app:create_app()"]) == 3
    assert worker_count(["/venv/bin/uvicorn", "--factory", "x"]) == 3
    assert worker_count(["uvicorn", "--workers", "4"]) == 4
    assert worker_count(["gunicorn", "-w", "2"]) == 2
    assert worker_count(["uvicorn", "--workers=5"]) == 5
    # `genai-service serve` is one process, whatever WEB_CONCURRENCY a platform sets.
    assert worker_count(["/venv/bin/genai-service", "serve"]) == 1
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert worker_count(["gunicorn"]) == 1


@pytest.mark.parametrize(("argv", "warned"), [(["gunicorn", "-w", "4"], True), (["x"], False)])
async def test_sqlite_with_several_workers_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], warned: bool
) -> None:
    monkeypatch.setattr("sys.argv", argv)
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with capture_logs() as logs:
        storage = await open_storage(settings)
        await storage.close()
    found = [log for log in logs if log["event"] == "sqlite_several_workers"]
    assert bool(found) is warned
    if warned:
        assert found[0]["log_level"] == "warning" and "Postgres" in found[0]["message"]
