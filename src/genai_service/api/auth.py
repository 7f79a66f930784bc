"""Who is asking, and what they may do: API keys, scopes and quotas.

Keys come from two places:
- the environment: API_KEYS (scope `user`) and ADMIN_API_KEYS (scope `admin`), compared in
  constant time; their principal is a non-secret 8-hex-digit id derived from the key;
- the database (`genai-service keys create`, POST /v1/admin/keys): found by SHA-256, with a
  scope, an expiry, and quotas (requests per minute, tokens per day); their principal is the
  key's id (`key_...`).

Authentication is on when either place holds a key. With none anywhere, every caller is
`anonymous`. The principal owns what the caller stores (see storage/repository.py).

Scopes: `admin` may do everything; `user` everything but key management, other keys' usage
and a protected /metrics. Quotas answer 429 as OpenAI does: `Retry-After` and the
`x-ratelimit-*` headers (sent on every response of a key that has a quota).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request

from genai_service.api.deps import State
from genai_service.api.errors import APIError, unauthorized
from genai_service.api.storage_deps import database_unavailable
from genai_service.storage import Storage
from genai_service.storage import keys as key_store
from genai_service.storage.database import is_unavailable
from genai_service.storage.models import ANONYMOUS, ApiKey, utcnow

# The quotas' clock (naive UTC); a module attribute so tests can hold time still.
clock = utcnow


@dataclass(frozen=True, slots=True)
class Caller:
    principal: str  # owns stored objects; the usage ledger's api_key_id
    scope: key_store.Scope
    key: ApiKey | None = None  # a database key, with its quotas
    authenticated: bool = True


ANONYMOUS_CALLER = Caller(ANONYMOUS, "user", authenticated=False)


def env_key_id(presented: bytes) -> str:
    # A non-secret name for an environment key: it cannot be turned back into the key.
    return hashlib.sha256(presented).hexdigest()[:8]


def _presented_key(request: Request) -> str:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`; "" when neither was
    sent. An Authorization header of another form is malformed, not missing (401 says so)."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized(
                "Malformed Authorization header: expected 'Authorization: Bearer <key>'."
            )
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def _env_scope(presented: bytes, state: State) -> key_store.Scope | None:
    # Every key is compared (no early exit), so timing tells nothing about which one nearly
    # matched; keys never reach a log line.
    user = admin = False
    for key in state.settings.api_key_values:
        user |= hmac.compare_digest(presented, key)
    for key in state.settings.admin_key_values:
        admin |= hmac.compare_digest(presented, key)
    return "admin" if admin else "user" if user else None


def _storage(request: Request) -> Storage | None:
    return getattr(request.app.state, "storage", None)


def _unavailable(storage: Storage) -> APIError:
    db = storage.db
    return database_unavailable(db.schema_reason or db.reason or "the database is unavailable")


@contextmanager
def _database_errors(storage: Storage) -> Iterator[None]:
    """A database that cannot be reached is marked down and answers 503, never 500."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            storage.db.mark_down(exc)
            raise _unavailable(storage) from None
        raise


async def _keys_in_database(storage: Storage | None) -> bool:
    """Whether the database holds keys (then authentication is on); fails closed with 503
    while that was never answered."""
    if storage is None:
        return False
    known = await storage.key_presence.any(storage.db)
    if known is None:
        raise _unavailable(storage)
    return known


async def _find(storage: Storage | None, presented: bytes) -> ApiKey | None:
    if storage is None or await storage.key_presence.any(storage.db) is False:
        return None  # no key in the database (as last seen): no look-up, a plain 401
    if not storage.db.schema_ready:
        raise _unavailable(storage)
    with _database_errors(storage):
        return await key_store.find_key(storage.db, presented)


async def require_api_key(request: Request, state: State) -> Caller:
    """The caller, from `Authorization: Bearer <key>` or `X-API-Key`; 401 when authentication
    is on and the key is missing, malformed, unknown, revoked or expired; 429 over the key's
    requests-per-minute."""
    env_keys = bool(state.settings.api_key_values or state.settings.admin_key_values)
    storage = _storage(request)
    if not env_keys and not await _keys_in_database(storage):
        return ANONYMOUS_CALLER
    token = _presented_key(request)
    if token and env_keys:
        presented = token.encode()
        scope = _env_scope(presented, state)
        if scope is not None:
            return _remember(request, Caller(env_key_id(presented), scope))
    if not token:
        raise unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
        )
    row = await _find(storage, token.encode())
    if row is None:
        raise unauthorized("Incorrect API key provided.")
    now = clock()
    if row.revoked_at is not None:
        raise unauthorized("This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise unauthorized("This API key has expired.")
    caller = _remember(request, Caller(row.id, row.scope, row))  # type: ignore[arg-type]
    if row.requests_per_minute is not None and storage is not None:
        await _count_request(request, storage, row, now)
    return caller


def _remember(request: Request, caller: Caller) -> Caller:
    request.state.api_key_id = caller.principal  # for the usage ledger
    return caller


RATELIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: `20ms`, `6s`, `1m30s`, `5h0m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _set_headers(request: Request, kind: str, limit: int, remaining: int, reset: float) -> None:
    headers: dict[str, str] = request.scope.setdefault("state", {}).setdefault(
        "ratelimit_headers", {}
    )
    headers[f"x-ratelimit-limit-{kind}"] = str(limit)
    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
    headers[f"x-ratelimit-reset-{kind}"] = reset_text(reset)


def quota_exceeded(kind: str, limit: int, reset: float) -> APIError:
    per = "requests per minute (RPM)" if kind == "requests" else "tokens per day (TPD)"
    wait = math.ceil(reset)
    return APIError(
        429,
        f"Rate limit reached for this API key on {per}: limit {limit}. "
        f"Please try again in {reset_text(reset)}.",
        type=kind,  # OpenAI's rate-limit errors say `requests` or `tokens` here
        code="rate_limit_exceeded",
        headers={"Retry-After": str(wait)},
    )


async def _count_request(request: Request, storage: Storage, key: ApiKey, now: datetime) -> None:
    limit = key.requests_per_minute or 0
    with _database_errors(storage):
        count = await key_store.count_request(storage.db, key.id, now)
    reset = (key_store.minute_window(now) + timedelta(minutes=1) - now).total_seconds()
    _set_headers(request, "requests", limit, limit - count, reset)
    if count > limit:
        raise quota_exceeded("requests", limit, reset)


Authenticated = Annotated[Caller, Depends(require_api_key)]


async def token_budget(request: Request, caller: Authenticated) -> None:
    """Generation routes: 429 once the key's tokens for today (UTC) are spent.

    Tokens are counted when a generation's usage record is written, so the request that
    crosses the budget finishes; the next one is refused.
    """
    key = caller.key
    storage = _storage(request)
    if key is None or key.tokens_per_day is None or storage is None:
        return
    now = clock()
    with _database_errors(storage):
        used = await key_store.tokens_used(storage.db, key.id, now)
    limit = key.tokens_per_day
    reset = (key_store.day_window(now) + timedelta(days=1) - now).total_seconds()
    _set_headers(request, "tokens", limit, limit - used, reset)
    if used >= limit:
        raise quota_exceeded("tokens", limit, reset)


async def get_principal(caller: Authenticated) -> str:
    """Who owns what this request stores: the key's principal, or `anonymous` when
    authentication is off. Depends on `require_api_key` itself (FastAPI runs it once per
    request), so no route can read a principal that was not authenticated."""
    return caller.principal


Principal = Annotated[str, Depends(get_principal)]


async def require_admin(caller: Authenticated) -> Caller:
    if not caller.authenticated:
        raise APIError(
            403,
            "Key management needs authentication: create the first admin key with "
            "`genai-service keys create --scope admin`, or set ADMIN_API_KEYS.",
            code="authentication_disabled",
        )
    if caller.scope != "admin":
        raise APIError(
            403, "This route needs an API key with the admin scope.", code="insufficient_scope"
        )
    return caller


Admin = Annotated[Caller, Depends(require_admin)]


async def metrics_access(caller: Authenticated) -> None:
    """METRICS_REQUIRE_KEY: /metrics for admin keys (open while authentication is off)."""
    if caller.authenticated and caller.scope != "admin":
        raise APIError(
            403, "This route needs an API key with the admin scope.", code="insufficient_scope"
        )
