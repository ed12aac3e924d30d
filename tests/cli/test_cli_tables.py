"""CLI tables fit the terminal like kubectl's: one line per row whatever the width, never wrapped inside a cell;
on a narrow terminal the less important columns go first, then long cells are cut with an ellipsis (ids,
addresses and ports never while anything else can give way). Output that is not a terminal and has no COLUMNS
is never cut. (Issue 9: at 80 columns `forward ls` wrapped every row into fragments.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import EXTERNAL, Cli, gw, lab_for
from tests.harness import database_url

LONG_NAME = "centos-build-server-with-a-long-name-01"
LONG_DESC = "the build box of the storage team; ask on #storage before rebooting it " * 2


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a rich table; fails unless every row is exactly one line."""
    header: list[str] | None = None
    rows = []
    for line in text.splitlines():
        if "┃" in line:
            assert header is None, f"the header takes several lines:\n{text}"
            header = [c.strip() for c in line.strip().strip("┃").split("┃")]
        elif "│" in line:
            assert header is not None, text
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            assert len(cells) == len(header), (header, cells)
            rows.append(cells)
    assert header is not None, f"no table in {text!r}"
    return header, rows


def assert_fits(text: str, width: int) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, f"lines longer than {width}:\n" + "\n".join(too_long)


@pytest.fixture
def two_gateways(cli: Cli, tmp_path: Path):
    """A server with two gateways (one with a long name), alice logged in, and forwards with long cells."""
    gateways = [gw("default"), gw("lab-two-long-gateway-name", port_range=["5000-5010"],
                                  external_address="198.51.100.2")]
    with lab_for(database_url(tmp_path, "tables.db"), gateways) as lab:
        cli.configure(lab.url, lab.tokens["alice"], extra_contexts={
            "other": {"url": "http://labgate-gateway.storage.example.net:3000", "token": "lg_x",
                      "gateway": "lab-two-long-gateway-name", "host": "gw.storage.example.net"}})
        forwards = [
            lab.create(name=LONG_NAME, kind="centos", description=LONG_DESC, gateway="default",
                       allowed_sources=["203.0.113.0/24"]),
            lab.create(name="w1", kind="windows", target_port=3389, gateway="lab-two-long-gateway-name"),
            lab.create(name="w1", kind="windows", target_port=5900, port_count=3, gateway="default"),
        ]
        yield lab, forwards


@pytest.mark.parametrize("width", [80, 60])
def test_tables_fit_the_terminal_one_line_per_row(cli: Cli, two_gateways, width: int) -> None:
    lab, forwards = two_gateways
    columns = str(width)
    ls, show, machines, gateways, contexts = cli.parallel(
        ("forward", "ls"), ("forward", "show", str(forwards[0]["id"])), ("machine", "ls"), ("gateway", "ls"),
        ("context", "ls"), COLUMNS=columns)
    for res in (ls, show, machines, gateways, contexts):
        res.ok()
        assert_fits(res.stdout, width)

    header, rows = table_rows(ls.stdout)
    assert len(rows) == 3
    # The columns that say what goes where are always there, in full.
    assert {"id", "name", "proto", "external", "target"} <= set(header), header
    assert "description" not in header and "used" not in header  # dropped before anything is cut
    got = [dict(zip(header, row)) for row in rows]
    expected = [(str(forwards[0]["id"]), f"{EXTERNAL}:4000", "10.9.0.5:22"),
                (str(forwards[1]["id"]), "198.51.100.2:5000", "10.9.0.5:3389"),
                (str(forwards[2]["id"]), f"{EXTERNAL}:4001-4003", "10.9.0.5:5900-5902")]
    if width >= 80:
        assert [(r["id"], r["external"], r["target"]) for r in got] == expected
    else:  # too narrow for a port block's addresses in full: cut like the rest, never wrapped
        assert [r["id"] for r in got] == [e[0] for e in expected]
    # A long name is cut with an ellipsis, not wrapped onto a second line.
    assert got[0]["name"].endswith("…") and LONG_NAME.startswith(got[0]["name"][:-1]), got[0]

    header, rows = table_rows(show.stdout)
    fields = {row[0]: row[1] for row in rows}
    assert fields["id"] == str(forwards[0]["id"]) and fields["external_port"] == "4000"
    assert fields["allowed_sources"] == "203.0.113.0/24" and fields["usage.connections"] == "0"
    assert fields["description"].endswith("…") and LONG_DESC.startswith(fields["description"][:-1])

    header, rows = table_rows(machines.stdout)
    assert [row[header.index("name")] for row in rows][1] == "w1" and len(rows) == 2

    header, rows = table_rows(gateways.stdout)
    assert len(rows) == 2 and "external" in header
    assert [row[header.index("external")] for row in rows] == [EXTERNAL, "198.51.100.2"]

    header, rows = table_rows(contexts.stdout)
    assert [row[header.index("name")] for row in rows] == ["default", "other"]


def test_a_tiny_terminal_still_gets_one_line_per_row(cli: Cli, two_gateways) -> None:
    res = cli("forward", "ls", COLUMNS="30").ok()
    assert_fits(res.stdout, 30)
    assert len(table_rows(res.stdout)[1]) == 3


def test_wide_terminal_shows_every_column_in_full(cli: Cli, two_gateways) -> None:
    res = cli("forward", "ls", COLUMNS="400").ok()
    header, rows = table_rows(res.stdout)
    assert header == ["id", "name", "kind", "proto", "external", "target", "status", "health", "used", "owner",
                      "description"]
    assert rows[0][1] == LONG_NAME and rows[0][-1] == LONG_DESC.strip()


def test_not_a_terminal_without_columns_is_never_cut(cli: Cli, two_gateways) -> None:
    """Piped into a file or another program with no COLUMNS: full rows, however long, one line each."""
    res = cli("forward", "ls", COLUMNS=None).ok()
    header, rows = table_rows(res.stdout)
    assert len(header) == 11 and len(rows) == 3
    assert rows[0][1] == LONG_NAME and rows[0][-1] == LONG_DESC.strip()
    assert "…" not in res.stdout
