"""`genai-service keys ...`: API keys kept in the database (create, list, revoke).

Works on the database directly (DATABASE_URL or --database-url), so the first admin key can
be made before the service runs. A created key goes to stdout, once; everything else goes to
stderr, so `KEY=$(genai-service keys create --name ci)` captures just the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer

from genai_service.cli_support import error, load_settings, note
from genai_service.db_cli import UrlOption, _safe, _url

keys_app = typer.Typer(
    help="API keys in the database: create, list, revoke.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

T = TypeVar("T")


def _run(url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(db)` on a migrated database; one line and exit 1 on failure."""
    from genai_service.storage import migrate
    from genai_service.storage.database import Database, describe_error, is_sqlite, make_engine

    async def go() -> T:
        db = Database(url, make_engine(url))
        db.healthy = True  # no "database_available" log line: stdout is for the key alone
        try:
            current = await migrate.current_revision(db.engine)
            if current != migrate.head_revision():
                # The embedded SQLite migrates itself, as `serve` would; Postgres is the
                # operator's call.
                if not is_sqlite(url) or load_settings().auto_migrate is False:
                    raise RuntimeError(
                        f"the schema is at {current or 'empty'}, not "
                        f"{migrate.head_revision()}: run `genai-service db upgrade` first"
                    )
                await migrate.upgrade_async(url)
            return await action(db)
        except RuntimeError:
            raise
        except Exception as exc:
            raise RuntimeError(describe_error(exc, url)) from None
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except RuntimeError as exc:
        error(f"{_safe(url)}: {exc}")
        raise typer.Exit(1) from None


@keys_app.command("create")
def create(
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="What the key is for (shown in lists).")
    ],
    scope: Annotated[
        str, typer.Option("--scope", metavar="SCOPE", help="user (default) or admin.")
    ] = "user",
    expires_in_days: Annotated[
        float | None,
        typer.Option("--expires-in-days", metavar="DAYS", min=0, help="Default: never."),
    ] = None,
    requests_per_minute: Annotated[
        int | None,
        typer.Option("--rpm", metavar="N", min=1, help="Requests per minute (default: no limit)."),
    ] = None,
    tokens_per_day: Annotated[
        int | None,
        typer.Option("--tpd", metavar="N", min=1, help="Tokens per UTC day (default: no limit)."),
    ] = None,
    database_url: UrlOption = None,
) -> None:
    """Make a key and print it, once (stdout). Only its hash is stored."""
    from genai_service.storage import keys as key_store
    from genai_service.storage.models import utcnow

    if scope not in key_store.SCOPES:
        error(f"invalid --scope {scope!r}: use user or admin")
        raise typer.Exit(2)
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    url = _url(database_url)
    row, secret = _run(
        url,
        lambda db: key_store.create_key(
            db,
            name=name,
            scope=scope,  # type: ignore[arg-type]
            expires_at=expires,
            requests_per_minute=requests_per_minute,
            tokens_per_day=tokens_per_day,
        ),
    )
    note(f"created {row.id} ({row.scope}) '{row.name}'; the key is shown this once:")
    typer.echo(secret)


@keys_app.command("list")
def list_(database_url: UrlOption = None) -> None:
    """Every key: id, prefix, scope, status, expiry (UTC), quotas (never the key itself)."""
    from genai_service.storage import keys as key_store
    from genai_service.storage.models import utcnow

    rows = _run(_url(database_url), key_store.list_keys)
    now = utcnow()
    typer.echo(
        f"{'ID':<17}{'PREFIX':<14}{'SCOPE':<7}{'STATUS':<9}{'EXPIRES':<12}{'RPM':>7}{'TPD':>11}"
        "  NAME"
    )
    for r in rows:
        status = (
            "revoked"
            if r.revoked_at
            else "expired"
            if r.expires_at and r.expires_at <= now
            else "active"
        )
        rpm = str(r.requests_per_minute or "-")
        tpd = str(r.tokens_per_day or "-")
        expires = f"{r.expires_at:%Y-%m-%d}" if r.expires_at else "-"
        typer.echo(
            f"{r.id:<17}{r.prefix:<14}{r.scope:<7}{status:<9}{expires:<12}{rpm:>7}{tpd:>11}"
            f"  {r.name}"
        )


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_...).")],
    database_url: UrlOption = None,
) -> None:
    """Revoke a key: refused from the next request on (its usage rows stay)."""
    from genai_service.storage import keys as key_store

    row = _run(_url(database_url), lambda db: key_store.revoke_key(db, key_id))
    if row is None:
        error(f"no API key {key_id!r}")
        raise typer.Exit(1)
    note(f"revoked {row.id} '{row.name}'")
