"""What every ``fleetwatch`` command module shares: the console and the one-line error exit."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def fail(exc: Exception) -> None:
    """Print ``exc`` as one red line and exit with status 2 (a user error, not a bug)."""
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(2)
