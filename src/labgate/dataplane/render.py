"""Pure rendering of a gateway's desired forwards into nftables text (no I/O, unit-testable without root).

Design (see docs/design.md): static chains, dynamic maps. The rules never change when forwards change; only map
elements do, so the cost of matching a packet does not depend on how many forwards exist and a change is a few
element operations in one atomic batch.

  ids       (external address . protocol . external port) -> forward id, stored in the connection mark
  targets   (external address . protocol . external port) -> (target address . target port), used by dnat
  restricted / sources   forwards with allowed_sources, checked in a filter chain on the forward hook
  port_ranges   the gateway's external port ranges (static), which the masquerade rule matches

Every rule must list (`nft list ruleset`) in a form `nft -f` reads back: operators save the listing and load it at
boot. nft 1.0.6 cannot name the type of `ct original proto-dst`, so a constant or an anonymous set compared with it
lists as "0xfa0 [invalid type]", which does not parse; a named set of type inet_service lists by name and reloads.

A block of N ports (port_count) is N elements in each map, so port p of the block goes to target_port + (p - start).
Every value written here comes from a `ForwardRule`, whose constructor only accepts parsed addresses and integers:
no user text can reach the nft parser.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

PROTOCOLS = ("tcp", "udp")
SENTINEL_MARK = 0xFFFFFFFF
MAX_MARK = SENTINEL_MARK - 1  # forward ids are marks; the last one is the sentinel's


@dataclass(frozen=True)
class Sentinel:
    """An element every full render puts in one of the big sets, never touched by changes: its absence means the
    set was flushed or replaced behind labgate's back. The kernel can be asked about one element in microseconds,
    where listing the set costs seconds at 50,000 forwards (dataplane/nfnetlink.py). `raw` is the element's key
    as the kernel stores it."""

    set_name: str
    element: str  # as written in the batch (with its data for a map)
    raw: bytes

    @property
    def key(self) -> str:
        return self.element.partition(" : ")[0]


# Never matched by traffic: no packet arrives for 0.0.0.0, and no forward id is SENTINEL_MARK.
SENTINELS = (
    Sentinel("ids", "0.0.0.0 . tcp . 0 : 0", bytes(4) + bytes([6, 0, 0, 0]) + bytes(4)),
    Sentinel("targets", "0.0.0.0 . tcp . 0 : 0.0.0.0 . 0", bytes(4) + bytes([6, 0, 0, 0]) + bytes(4)),
    Sentinel("restricted", str(SENTINEL_MARK), SENTINEL_MARK.to_bytes(4, "little")),
)


@dataclass(frozen=True)
class ForwardRule:
    """What the kernel must do for one enabled forward. Raises ValueError on anything not well-formed."""

    id: int
    protocol: str
    external_address: ipaddress.IPv4Address
    external_port: int
    target_address: ipaddress.IPv4Address
    target_port: int
    port_count: int = 1
    allowed_sources: tuple[ipaddress.IPv4Network, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (isinstance(self.id, int) and 0 < self.id <= MAX_MARK):
            raise ValueError(f"forward id {self.id!r} is not a valid mark")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {PROTOCOLS}")
        for name in ("external_address", "target_address"):
            if not isinstance(getattr(self, name), ipaddress.IPv4Address):
                raise ValueError(f"{name} must be an IPv4Address")
        if not isinstance(self.port_count, int) or self.port_count < 1:
            raise ValueError("port_count must be a positive integer")
        for name in ("external_port", "target_port"):
            port = getattr(self, name)
            if not (isinstance(port, int) and 1 <= port and port + self.port_count - 1 <= 65535):
                raise ValueError(f"{name} {port!r} (+{self.port_count - 1}) is outside 1-65535")
        if not all(isinstance(n, ipaddress.IPv4Network) for n in self.allowed_sources):
            raise ValueError("allowed_sources must be IPv4Network values")

    def keys(self) -> list[str]:
        prefix = f"{self.external_address} . {self.protocol} . "
        return [f"{prefix}{self.external_port + i}" for i in range(self.port_count)]

    def id_elements(self) -> list[str]:
        return [f"{k} : {self.id}" for k in self.keys()]

    def target_elements(self) -> list[str]:
        target = f" : {self.target_address} . "
        return [f"{k}{target}{self.target_port + i}" for i, k in enumerate(self.keys())]

    def elements(self) -> tuple[list[str], list[str]]:
        """(id elements, target elements) in one pass: the full render does this 50,000 times."""
        keys = self.keys()
        target = f" : {self.target_address} . "
        ident = f" : {self.id}"
        return [k + ident for k in keys], [f"{k}{target}{self.target_port + i}" for i, k in enumerate(keys)]

    def source_elements(self) -> list[str]:
        return [f"{self.id} . {net}" for net in self.allowed_sources]

    def row(self) -> "RuleRow":
        return (self.id, self.protocol, self.external_port, self.port_count, str(self.target_address),
                self.target_port, tuple(str(n) for n in self.allowed_sources))


@dataclass(frozen=True)
class GatewayShape:
    """The static part of a gateway's table: its name, external address, port ranges, masquerading."""

    table: str
    external_address: ipaddress.IPv4Address
    port_ranges: tuple[tuple[int, int], ...]
    masquerade: bool

    @property
    def usage_table(self) -> str:
        """The small table of per-forward counters, kept apart so a full re-render of the forwarding table (and
        listing counters) never has to touch the big maps, and counters survive a re-render."""
        return f"{self.table}_usage"

    def __post_init__(self) -> None:
        if not self.table.replace("_", "").isalnum() or not self.table[0].isalpha():
            raise ValueError(f"table name {self.table!r} is not a plain identifier")
        if not isinstance(self.external_address, ipaddress.IPv4Address):
            raise ValueError("external_address must be an IPv4Address")
        for low, high in self.port_ranges:
            if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 65535):
                raise ValueError(f"bad port range {low}-{high}")


# Chain names and the number of rules each holds: reconcile uses this to notice a flushed table.
CHAINS = {"prerouting": 1, "forward": 1, "postrouting": 1}


def _elements(items: list[str]) -> str:
    return "elements = { " + ", ".join(items) + " }" if items else ""


def merged_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Port ranges sorted, with overlapping and adjacent ones joined: a named interval set refuses overlapping
    elements (an anonymous one merged them silently), and merged elements list exactly as they were written."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


# A forward as the full render needs it, in its stored form: (id, protocol, external_port, port_count,
# target_address, target_port, allowed_sources). Addresses are dotted-quad text and allowed_sources a tuple of CIDR
# texts; `render_gateway_rows` checks every field before any of it reaches a batch. A full render of 50,000
# forwards from tuples costs a fraction of building 50,000 ForwardRule objects first.
RuleRow = tuple[int, str, int, int, str, int, tuple[str, ...]]

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def as_rows(rules: "Sequence[ForwardRule] | Sequence[RuleRow]") -> "Sequence[RuleRow]":
    """Rules in the row form, whichever form they come in."""
    if rules and isinstance(rules[0], ForwardRule):
        return [r.row() for r in rules]  # type: ignore[union-attr]
    return rules  # type: ignore[return-value]


def _bad_row(row: object, why: str) -> ValueError:
    ident = row[0] if isinstance(row, tuple) and row else row
    return ValueError(f"forward {ident!r}: {why}")


def _checked_sources(row: RuleRow) -> list[str]:
    try:
        nets = [ipaddress.IPv4Network(n) for n in row[6]]
    except (ValueError, TypeError) as exc:
        raise _bad_row(row, f"allowed_sources: {exc}") from None
    return [f"{row[0]} . {net}" for net in nets]


def render_gateway_rows(shape: GatewayShape, rows: Iterable[RuleRow]) -> str:
    """render_gateway_table from rows (see RuleRow); raises ValueError naming the forward of a malformed row."""
    return "".join(render_gateway_parts(shape, rows))


_CHUNK = 2_000  # rows whose element texts are joined at once: the per-element strings never all exist together


def render_gateway_parts(shape: GatewayShape, rows: Iterable[RuleRow]) -> list[str]:
    """The same batch as render_gateway_rows, as consecutive parts of it (for NamespaceKernel.apply): element
    texts are joined 2,000 rows at a time and the parts are never joined into one string. At 50,000 forwards the
    one-string render peaked ~25 MiB above its result (a string per element and map, then their joins, then the
    whole text); this peaks at about the size of the text."""
    ext = str(shape.external_address)
    ids: list[str] = []
    targets: list[str] = []
    restricted: list[str] = []
    sources: list[str] = []
    chunk_ids: list[str] = []
    chunk_targets: list[str] = []
    ip_ok = _IPV4.fullmatch
    for row in rows:
        try:
            fid, protocol, port, count, target, tport, allowed = row
        except (TypeError, ValueError):
            raise _bad_row(row, "not a rule row") from None
        # type() is int, not isinstance: a bool is no port. The checks match ForwardRule's.
        if not (type(fid) is int and 0 < fid <= MAX_MARK):
            raise _bad_row(row, "id is not a valid mark")
        if protocol not in PROTOCOLS:
            raise _bad_row(row, f"protocol {protocol!r} is not one of {PROTOCOLS}")
        if not (type(port) is int and type(tport) is int and type(count) is int and count >= 1
                and port >= 1 and tport >= 1 and port + count <= 65536 and tport + count <= 65536):
            raise _bad_row(row, "ports outside 1-65535")
        if type(target) is not str or not ip_ok(target):
            raise _bad_row(row, f"target address {target!r} is not a dotted-quad IPv4 address")
        if count == 1:
            key = f"{ext} . {protocol} . {port}"
            chunk_ids.append(f"{key} : {fid}")
            chunk_targets.append(f"{key} : {target} . {tport}")
        else:
            for i in range(count):
                key = f"{ext} . {protocol} . {port + i}"
                chunk_ids.append(f"{key} : {fid}")
                chunk_targets.append(f"{key} : {target} . {tport + i}")
        if allowed:
            restricted.append(str(fid))
            sources.extend(_checked_sources(row))
        if len(chunk_ids) >= _CHUNK:
            ids.append(", ".join(chunk_ids))
            targets.append(", ".join(chunk_targets))
            chunk_ids.clear()
            chunk_targets.clear()
    if chunk_ids:
        ids.append(", ".join(chunk_ids))
        targets.append(", ".join(chunk_targets))
    return _table_parts(shape, ids, targets, restricted, sources)


def render_gateway_table(shape: GatewayShape, rules: Iterable[ForwardRule]) -> str:
    """The whole table as one batch that atomically replaces any previous version of it (and only it)."""
    return render_gateway_rows(shape, (rule.row() for rule in rules))


def _elements_parts(items: list[str]) -> list[str]:
    """_elements(items) as parts: the same text, never joined into one string."""
    if not items:
        return [""]
    out = ["elements = { "]
    for i, item in enumerate(items):
        if i:
            out.append(", ")
        out.append(item)
    out.append(" }")
    return out


def _table_parts(shape: GatewayShape, ids: list[str], targets: list[str], restricted: list[str],
                 sources: list[str]) -> list[str]:
    sentinel = {s.set_name: s.element for s in SENTINELS}
    ids.append(sentinel["ids"])
    targets.append(sentinel["targets"])
    restricted.append(sentinel["restricted"])
    t = shape.table
    ext = shape.external_address
    ranges = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in merged_ranges(shape.port_ranges)]
    # Masquerade exactly the connections DNATed to this gateway's external address and port ranges (matched on the
    # original tuple, not on a mark: other systems' DNAT is never masqueraded even where marks are shared). The
    # ranges live in the named set @port_ranges so that the rule lists in a reloadable form (see the module doc).
    masq = (
        f"    ct status dnat ct original ip daddr {ext} meta l4proto {{ tcp, udp }} "
        f"ct original proto-dst @port_ranges masquerade\n"
        if shape.masquerade
        else ""
    )
    return [
        # "add" then "delete" makes the delete valid whether or not the table exists; all of it is one transaction.
        f"add table ip {t}\n"
        f"delete table ip {t}\n"
        f"table ip {t} {{\n"
        f"  map ids {{ type ipv4_addr . inet_proto . inet_service : mark; ",
        *_elements_parts(ids),
        " }\n"
        "  map targets { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; ",
        *_elements_parts(targets),
        f" }}\n"
        f"  set restricted {{ type mark; {_elements(restricted)} }}\n"
        f"  set sources {{ type mark . ipv4_addr; flags interval; {_elements(sources)} }}\n"
        f"  set port_ranges {{ type inet_service; flags interval; {_elements(ranges)} }}\n"
        f"  chain prerouting {{\n"
        f"    type nat hook prerouting priority dstnat - 10; policy accept;\n"
        f"    meta l4proto {{ tcp, udp }} ct mark set ip daddr . meta l4proto . th dport map @ids "
        f"dnat ip to ip daddr . meta l4proto . th dport map @targets\n"
        f"  }}\n"
        f"  chain forward {{\n"
        f"    type filter hook forward priority filter - 10; policy accept;\n"
        f"    ct direction original ct status dnat ct original ip daddr {ext} "
        f"ct mark @restricted ct mark . ip saddr != @sources drop\n"
        f"  }}\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat - 10; policy accept;\n"
        f"{masq}"
        f"  }}\n"
        f"}}\n",
    ]


def render_changes(shape: GatewayShape, remove: Iterable[ForwardRule], add: Iterable[ForwardRule]) -> str:
    """Element deletions then additions, as one batch: a retarget is the old rule removed and the new one added.
    A forward that stays (same id on both sides) keeps its usage counters. One command per set and verb, whatever
    the number of rules (a batch of 10,000 creates is 4 commands, not 40,000: nft parses each command on its own)."""
    t, u = shape.table, shape.usage_table
    remove, add = list(remove), list(add)
    kept = {r.id for r in remove} & {r.id for r in add}
    lines: list[str] = []
    for verb, rules in (("delete", remove), ("add", add)):
        sets: dict[tuple[str, str], list[str]] = {}
        for key in ((t, "ids"), (t, "targets"), (t, "restricted"), (t, "sources"), *((u, n) for n in USAGE_SETS)):
            sets[key] = []
        for rule in rules:
            if verb == "delete":
                keys = rule.keys()
                sets[(t, "ids")].extend(keys)
                sets[(t, "targets")].extend(keys)
            else:
                ids, targets = rule.elements()
                sets[(t, "ids")].extend(ids)
                sets[(t, "targets")].extend(targets)
            if rule.allowed_sources:
                sets[(t, "restricted")].append(str(rule.id))
                sets[(t, "sources")].extend(rule.source_elements())
            if rule.id not in kept:
                for counter_set in USAGE_SETS:
                    sets[(u, counter_set)].append(str(rule.id))
        for (table, where), items in sets.items():
            if items:
                lines.append(f"{verb} element ip {table} {where} {{ {', '.join(items)} }}")
    return "\n".join(lines) + ("\n" if lines else "")


USAGE_SETS = ("conns", "traffic")
USAGE_CHAINS = {"pre": 1, "forward": 1}


def render_drop_tables(table: str) -> str:
    """Remove a gateway's two tables (forwarding and counters) in one batch; a no-op for tables that are missing
    ("add" first, so the "delete" always has something to delete)."""
    if not table.replace("_", "").isalnum() or not table[0].isalpha():
        raise ValueError(f"table name {table!r} is not a plain identifier")
    u = f"{table}_usage"
    return f"add table ip {table}\ndelete table ip {table}\nadd table ip {u}\ndelete table ip {u}\n"


def render_usage_table(shape: GatewayShape, ids: Iterable[int]) -> str:
    """The counters table, replaced whole (its counters start at zero): only when missing or damaged."""
    u = shape.usage_table
    items = _elements([str(i) for i in ids])
    return (
        f"add table ip {u}\n"
        f"delete table ip {u}\n"
        f"table ip {u} {{\n"
        f"  set conns {{ type mark; counter; {items} }}\n"
        f"  set traffic {{ type mark; counter; {items} }}\n"
        f"  chain pre {{\n"
        f"    type filter hook prerouting priority dstnat + 10; policy accept;\n"
        # The forwarding table set the mark at dstnat - 10: a new connection of forward N counts once here.
        f"    ct state new ct mark @conns\n"
        f"  }}\n"
        f"  chain forward {{\n"
        f"    type filter hook forward priority filter + 10; policy accept;\n"
        f"    ct mark @traffic\n"
        f"  }}\n"
        f"}}\n"
    )


def render_usage_ensure(shape: GatewayShape, ids: Iterable[int]) -> str:
    """Make the counters table right without losing counts and without listing anything (a listing fetches every
    element on nft 1.0.6): every "add" is a no-op for what exists, the chains are flushed and their one rule put
    back, and every id is added to the counter sets (an existing element keeps its counter)."""
    u = shape.usage_table
    items = ", ".join(str(i) for i in ids)
    lines = [
        f"add table ip {u}",
        f"add set ip {u} conns {{ type mark; counter; }}",
        f"add set ip {u} traffic {{ type mark; counter; }}",
        f"add chain ip {u} pre {{ type filter hook prerouting priority dstnat + 10; policy accept; }}",
        f"add chain ip {u} forward {{ type filter hook forward priority filter + 10; policy accept; }}",
        f"flush chain ip {u} pre",
        f"flush chain ip {u} forward",
        f"add rule ip {u} pre ct state new ct mark @conns",
        f"add rule ip {u} forward ct mark @traffic",
    ]
    if items:
        lines += [f"add element ip {u} {name} {{ {items} }}" for name in USAGE_SETS]
    return "\n".join(lines) + "\n"
