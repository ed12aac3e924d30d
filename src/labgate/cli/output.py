"""How the CLI shows things: rich tables for people, JSON for scripts, one-line errors with a hint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Iterable, Sequence

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

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


# --- tables ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """A table column. `drop`: 0 = always shown; otherwise dropped when the terminal is too narrow, higher numbers
    first (like kubectl's wide columns). `cut`: may be shortened with an ellipsis (ids, addresses and ports are
    never cut while anything else can give way)."""

    name: str
    drop: int = 0
    cut: bool = True


MIN_CUT_WIDTH = 10  # a column cut shorter than this (or its header) says nothing useful: drop columns first


def table_width() -> int | None:
    """The width tables must fit: $COLUMNS when set, else the terminal's; None when stdout is not a terminal
    (a pipe or a file: rows are never cut nor wrapped, whatever their length)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.strip().isdigit() and int(columns) > 0:
        return int(columns)
    if console.is_terminal:
        return console.width
    return None


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def fit_columns(columns: Sequence[Col], rows: list[list[str]], width: int | None) -> list[tuple[int, int]]:
    """Which columns to show and how wide: [(index, width)], so that the table (borders and padding included)
    fits `width`. Least important columns are dropped first, then the longest cells are cut."""
    natural = [max([cell_len(c.name)] + [cell_len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))
    if width is None:
        return [(i, natural[i]) for i in shown]

    def floor(i: int) -> int:
        c = columns[i]
        return min(natural[i], max(cell_len(c.name), MIN_CUT_WIDTH)) if c.cut else natural[i]

    def overhead(n: int) -> int:
        return 3 * n + 1  # "│ " before each cell, " " after it, and the closing "│"

    droppable = sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: (-columns[i].drop, -i))
    while droppable and overhead(len(shown)) + sum(floor(i) for i in shown) > width:
        shown.remove(droppable.pop(0))
    widths = {i: natural[i] for i in shown}
    excess = overhead(len(shown)) + sum(widths.values()) - width
    # Cut the widest cuttable cells first, down to their floor, then to a few characters; as a last resort, any.
    stages = ((True, floor), (True, lambda i: min(natural[i], 4)), (False, lambda i: 1))
    for only_cuttable, limit in stages:
        while excess > 0:
            candidates = [i for i in shown if widths[i] > limit(i) and (columns[i].cut or not only_cuttable)]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
    return [(i, widths[i]) for i in shown]


def table(columns: Sequence[str | Col], rows: Iterable[Sequence[Any]], title: str | None = None,
          out: Console | None = None) -> None:
    """Print rows as a table with one line per row, fitted to the terminal (see table_width): never wrapped
    inside a cell; less important columns dropped, then long cells cut with an ellipsis. Cells are shown
    verbatim (never read as rich markup)."""
    out = out or console
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    cells = [[_cell(v) for v in row] for row in rows]
    width = table_width()
    fitted = fit_columns(cols, cells, width)
    t = Table(title=title, header_style="bold")
    for i, w in fitted:
        t.add_column(cols[i].name, width=w, no_wrap=True, overflow="ellipsis")
    for row in cells:
        t.add_row(*[Text(row[i], no_wrap=True, overflow="ellipsis") for i, _ in fitted])
    total = max(3 * len(fitted) + 1 + sum(w for _, w in fitted), cell_len(title or ""))
    # Rendered at exactly its own width: Console.print would clamp it to the console's (80 when not a terminal).
    options = out.options.update(width=total if width is None else max(min(total, width), 1))
    out.print(Segments(out.render(t, options)), crop=False, soft_wrap=True)


def fail(exc: LabgateError) -> typer.Exit:
    """Print one line and a hint; return the Exit to raise with the error's exit code."""
    # Messages quote user text (names, descriptions, file names): never let it be read as markup.
    err_console.print(f"[red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def note(message: str) -> None:
    """One informational line on stderr (stdout stays parseable)."""
    err_console.print(f"[dim]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def retry_note(seconds: float, error: LabgateError) -> None:
    """Why a command pauses: the server answered 429 and the client waits as it was told (labgate.client)."""
    note(f"{error.message}; waiting {math.ceil(seconds)} s before trying again")


# --- help ------------------------------------------------------------------------------------------------------------
def _hide_flag_types() -> None:
    """Typer's rich help prints the type of every option, `<bool>` beside plain flags too (`--help <bool>`,
    `--print <bool>`), as if they took a value. A flag takes none: show no type for it (options with a value
    keep theirs). Typer has no setting for this, so its one method that gives the type to the help is wrapped;
    tests/cli/test_cli_help.py checks the result on every command."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_labgate_flags_untyped", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001 - typer's signature
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return original(self, ctx)

    display_type_rich._labgate_flags_untyped = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_hide_flag_types()
