"""Dependencies for routes that need the database, and the guard for plain completions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from genai_service.api.deps import State
from genai_service.api.errors import APIError
from genai_service.storage import Storage
from genai_service.storage.database import is_unavailable


def database_unavailable(reason: str = "the database is unavailable") -> APIError:
    return APIError(
        503,
        f"The database is unavailable ({reason}); retry in a few seconds.",
        code="database_unavailable",
        headers={"Retry-After": "5"},
    )


def include_storage_routes(app: FastAPI, dependencies: list[Any]) -> None:
    from genai_service.api.routes import admin, conversations, usage

    for router in (conversations.router, usage.router, admin.router):
        app.include_router(router, prefix="/v1", dependencies=dependencies)


async def get_storage(request: Request) -> Storage:
    storage: Storage | None = getattr(request.app.state, "storage", None)
    if storage is None:
        raise database_unavailable("storage is not configured")
    if not storage.db.schema_ready:
        raise database_unavailable(storage.db.schema_reason or "the schema is not ready yet")
    return storage


StorageDep = Annotated[Storage, Depends(get_storage)]


async def completions_guard(request: Request, state: State) -> None:
    """With COMPLETIONS_WITHOUT_DATABASE=false, plain completions stop while the DB is down
    (every token must reach the ledger); by default they keep serving."""
    if state.settings.completions_without_database:
        return
    storage: Storage | None = getattr(request.app.state, "storage", None)
    if storage is None or not await storage.db.check():
        raise database_unavailable(storage.db.reason if storage else "storage is not configured")


@contextlib.asynccontextmanager
async def database_errors(storage: Storage) -> AsyncIterator[None]:
    """A database that cannot be reached is a 503 in the OpenAI format, not a 500."""
    try:
        yield
    except APIError:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            storage.db.mark_down(exc)
            raise database_unavailable() from None
        raise
