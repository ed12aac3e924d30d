"""How the CLI shows things: rich tables for people, JSON for scripts, one-line errors with a hint."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from enum import Enum
from typing import Any, Iterable, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labgate.client.errors import LabgateError

console = Console()
err_console = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_plain(obj), indent=2, default=str) + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    t = Table(title=title, header_style="bold")
    for name in columns:
        # Fold rather than cut: an address or port shown half is worse than a taller table.
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else escape(str(v)) for v in row])
    console.print(t)


def fail(exc: LabgateError) -> typer.Exit:
    """Print one line and a hint; return the Exit to raise with the error's exit code."""
    # Messages quote user text (names, descriptions, file names): never let it be read as markup.
    err_console.print(f"[red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)
