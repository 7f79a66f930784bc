"""GET /v1/usage: requests and tokens from the usage ledger, by day, model and API key.

A caller sees only its own key's rows (without API keys: the rows of requests made without
one); an admin key sees every key's rows, or one key's with `api_key_id`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from genai_service.api.auth import Authenticated
from genai_service.api.errors import APIError
from genai_service.api.storage_deps import StorageDep, database_errors
from genai_service.api.storage_schemas import UsageBucket, UsageReport, UsageTotals, unix
from genai_service.storage import repository as repo
from genai_service.storage.models import ANONYMOUS

router = APIRouter(tags=["usage"])


# Times are bounded, so every sum below (the 30-day default window, time zones) stays a date.
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(9000, 1, 1)


def _moment(value: str | None, param: str) -> datetime | None:
    """Unix seconds, an ISO 8601 date or date-time (UTC unless it says otherwise)."""
    if value is None:
        return None
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            moment = datetime.fromtimestamp(float(text), UTC)
        elif len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            # 0001-01-01T00:00+01:00 is before year 1 in UTC: an OverflowError.
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        raise APIError(
            400,
            f"'{value}' is not a time: use unix seconds, YYYY-MM-DD or an ISO 8601 date-time.",
            param=param,
            code="invalid_value",
        ) from None
    if not EARLIEST <= moment <= LATEST:
        raise APIError(
            400,
            f"'{value}' is out of range: times from {EARLIEST:%Y-%m-%d} to "
            f"{LATEST:%Y-%m-%d} are accepted.",
            param=param,
            code="invalid_value",
        )
    return moment


@router.get("/usage", response_model=UsageReport)
async def usage(
    storage: StorageDep,
    caller: Authenticated,
    start: Annotated[
        str | None, Query(description="From (inclusive); default: 30 days before `end`.")
    ] = None,
    end: Annotated[str | None, Query(description="Until (exclusive); default: now.")] = None,
    api_key_id: Annotated[
        str | None,
        Query(max_length=16, description="Admin keys only: one key's rows (default: all)."),
    ] = None,
) -> UsageReport:
    until = _moment(end, "end") or datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)
    since = _moment(start, "start") or until - timedelta(days=30)
    if since >= until:
        raise APIError(400, "`start` must be before `end`.", param="start", code="invalid_range")
    if caller.authenticated and caller.scope == "admin":
        whose: Any = api_key_id if api_key_id is not None else repo.ALL_KEYS
    elif api_key_id is not None and api_key_id != caller.principal:
        raise APIError(
            403,
            "Only an admin key may read another key's usage.",
            param="api_key_id",
            code="insufficient_scope",
        )
    else:
        whose = None if caller.principal == ANONYMOUS else caller.principal
    async with database_errors(storage):
        rows = await repo.usage_summary(storage.db, since, until, whose)
    data = [
        UsageBucket(
            day=r.day,
            model=r.model,
            api_key_id=r.api_key_id,
            requests=r.requests,
            ok=r.ok,
            errors=r.errors,
            cancelled=r.cancelled,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            total_tokens=r.prompt_tokens + r.completion_tokens,
        )
        for r in rows
    ]
    totals = UsageTotals(
        requests=sum(b.requests for b in data),
        prompt_tokens=sum(b.prompt_tokens for b in data),
        completion_tokens=sum(b.completion_tokens for b in data),
        total_tokens=sum(b.total_tokens for b in data),
    )
    return UsageReport(start=unix(since), end=unix(until), data=data, totals=totals)
