"""`genai-service db ...`: database migrations (Alembic, scripts shipped in the package)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from genai_service.cli_support import error, load_settings, note

db_app = typer.Typer(
    help="Database schema: migrate, inspect.", no_args_is_help=True, rich_markup_mode=None
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy async URL [env DATABASE_URL; default: SQLite under DATA_DIR].",
    ),
]


def _url(database_url: str | None) -> str:
    """--database-url (sync spellings such as sqlite:/// accepted, as in DATABASE_URL) or the
    settings' URL; one line and exit status 2 when it is neither."""
    from genai_service.settings import normalize_database_url

    if not database_url:
        return load_settings().resolved_database_url
    try:
        return normalize_database_url(database_url)
    except ValueError as exc:
        error(f"invalid --database-url: {exc}")
        raise typer.Exit(2) from None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory ones)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: UrlOption = None,
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    _migrate("upgrade", revision, database_url)


@db_app.command("downgrade")
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision ('base' = empty).")],
    database_url: UrlOption = None,
) -> None:
    """Revert migrations down to REVISION."""
    _migrate("downgrade", revision, database_url)


def _migrate(action: str, revision: str, database_url: str | None) -> None:
    from genai_service.storage import migrate

    url = _url(database_url)
    try:
        getattr(migrate, action)(url, revision)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        error(f"{action} failed on {_safe(url)}: {first_line}")
        raise typer.Exit(1) from None
    note(f"{_safe(url)} is at revision {revision}")


@db_app.command("current")
def current(database_url: UrlOption = None) -> None:
    """Print which database it read, its revision and the newest one this version knows.

    Read-only: a SQLite file that does not exist is reported, not created.
    """
    from genai_service.storage import migrate
    from genai_service.storage.database import make_engine

    url = _url(database_url)
    typer.echo(f"database: {_safe(url)}")
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():
        # Connecting would create an empty file: report the missing one instead.
        typer.echo(
            f"current: empty (no file {sqlite_file} yet, nothing created; "
            "`genai-service db upgrade` or the first `serve` creates it)\n"
            f"head: {migrate.head_revision()}"
        )
        return

    async def read() -> str | None:
        engine = make_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(read())
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        error(f"cannot read {_safe(url)}: {first_line}")
        raise typer.Exit(1) from None
    typer.echo(f"current: {revision or 'empty'}\nhead: {migrate.head_revision()}")
