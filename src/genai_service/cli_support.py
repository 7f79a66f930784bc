"""What every command shares: one-line errors on stderr and settings that fail in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from genai_service.settings import Settings

console = Console(stderr=True)


def error(message: str) -> None:
    """One red line on stderr, printed as is (no markup, never wrapped)."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """One plain line on stderr (stdout stays for the command's result)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def load_settings() -> Settings:
    """The settings, or one line per bad variable and exit status 2 (no traceback)."""
    from genai_service.settings import SettingsError
    from genai_service.settings import load_settings as load

    try:
        return load()
    except SettingsError as exc:
        for line in exc.lines:
            error(line)
        raise typer.Exit(2) from None
