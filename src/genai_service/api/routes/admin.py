"""Key management, for admin keys only: POST/GET /v1/admin/keys, DELETE /v1/admin/keys/{id}.

The same operations as `genai-service keys create|list|revoke`. A created key is in the
response once (`key`); after that only its prefix is ever shown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from genai_service.api.auth import Admin
from genai_service.api.errors import APIError
from genai_service.api.storage_deps import StorageDep, database_errors
from genai_service.api.storage_schemas import unix
from genai_service.storage import keys as key_store
from genai_service.storage.models import ApiKey, utcnow

router = APIRouter(tags=["admin"])


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    scope: Literal["admin", "user"] = "user"
    expires_at: int | None = Field(
        None, ge=0, le=32_503_680_000, description="Unix seconds; default: never."
    )
    requests_per_minute: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Quota; default: unlimited."
    )
    tokens_per_day: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Quota (prompt + completion); default: unlimited."
    )


class KeyObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    scope: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    requests_per_minute: int | None
    tokens_per_day: int | None


class CreatedKey(KeyObject):
    key: str = Field(description="The API key itself: shown this once, never again.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


def key_object(row: ApiKey) -> dict[str, object]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "scope": row.scope,
        "created_at": unix(row.created_at),
        "expires_at": unix(row.expires_at) if row.expires_at else None,
        "revoked_at": unix(row.revoked_at) if row.revoked_at else None,
        "requests_per_minute": row.requests_per_minute,
        "tokens_per_day": row.tokens_per_day,
    }


@router.post("/admin/keys", response_model=CreatedKey, status_code=201)
async def create_key(body: CreateKeyRequest, storage: StorageDep, _admin: Admin) -> CreatedKey:
    expires = (
        datetime.fromtimestamp(body.expires_at, UTC).replace(tzinfo=None)
        if body.expires_at is not None
        else None
    )
    if expires is not None and expires <= utcnow():
        raise APIError(400, "`expires_at` is in the past.", param="expires_at")
    async with database_errors(storage):
        row, secret = await key_store.create_key(
            storage.db,
            name=body.name,
            scope=body.scope,
            expires_at=expires,
            requests_per_minute=body.requests_per_minute,
            tokens_per_day=body.tokens_per_day,
        )
    storage.key_presence.saw_key()
    return CreatedKey(key=secret, **key_object(row))  # type: ignore[arg-type]


@router.get("/admin/keys", response_model=KeyList)
async def list_keys(storage: StorageDep, _admin: Admin) -> KeyList:
    async with database_errors(storage):
        rows = await key_store.list_keys(storage.db)
    return KeyList(data=[KeyObject(**key_object(r)) for r in rows])  # type: ignore[arg-type]


@router.delete("/admin/keys/{key_id}", response_model=KeyObject)
async def revoke_key(key_id: str, storage: StorageDep, _admin: Admin) -> KeyObject:
    """Revoke a key: it is refused from the next request on; its usage rows stay."""
    async with database_errors(storage):
        row = await key_store.revoke_key(storage.db, key_id)
    if row is None:
        raise APIError(404, f"No API key '{key_id}'.", param="key_id", code="key_not_found")
    return KeyObject(**key_object(row))  # type: ignore[arg-type]
