"""`genai-service db ...`: database migrations (Alembic, scripts shipped in the package)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

db_app = typer.Typer(help="Database schema: migrate, inspect.", no_args_is_help=True)
console = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy async URL [env DATABASE_URL; default: SQLite under DATA_DIR].",
    ),
]


def _url(database_url: str | None) -> str:
    from genai_service.settings import Settings

    return database_url or Settings().resolved_database_url


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
        console.print(f"[red]{action} failed on {_safe(url)}: {exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"{_safe(url)} is at revision {revision}")


@db_app.command("current")
def current(database_url: UrlOption = None) -> None:
    """Print the database's revision and the newest one this version knows."""
    from genai_service.storage import migrate
    from genai_service.storage.database import make_engine

    url = _url(database_url)

    async def read() -> str | None:
        engine = make_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(read())
    except Exception as exc:
        console.print(f"[red]cannot read {_safe(url)}: {exc}[/]")
        raise typer.Exit(1) from None
    typer.echo(f"current: {revision or 'empty'}\nhead: {migrate.head_revision()}")
