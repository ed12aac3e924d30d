"""An in-memory kernel for unit and API tests: the same interface as NamespaceKernel, no root, with a dump.

It understands exactly the nft text that render.py writes (tables, maps, sets, chains, element and rule commands)
and keeps nft's semantics where the sync relies on them: a batch is all or nothing; adding an existing map key with
other data, deleting a missing element or table, or touching a missing table refuses the whole batch. Failures can
be injected (`refuse_next`, `refuse_matching`, `gone`), so refusal, partial failure and repair are testable without
root. The kernel tests prove the real thing; this proves the logic around it.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import threading
from dataclasses import dataclass, field
from typing import Sequence

from labgate.dataplane.conntrack import Connection
from labgate.dataplane.kernel import Addresses, KernelError
from labgate.dataplane.render import Sentinel


@dataclass
class FakeSet:
    """A set (data None) or a map (element -> data), with per-element counters when `counter`."""

    kind: str  # "set" or "map"
    spec: str
    elements: dict[str, str | None] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def counter(self) -> bool:
        return "counter;" in self.spec


@dataclass
class FakeTable:
    sets: dict[str, FakeSet] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)


_WS = re.compile(r"\s+")
_TABLE = r"ip ([A-Za-z][A-Za-z0-9_]*)"


def _norm(text: str) -> str:
    return _WS.sub(" ", text.strip())


def _items(body: str) -> list[str]:
    return [_norm(i) for i in body.split(",") if i.strip()]


class FakeKernel:
    """One gateway's kernel, in memory. Thread-safe; every call is atomic."""

    def __init__(self, *, addresses: list[str] | None = None, preferred: str | None = None,
                 ip_forward: bool = True) -> None:
        self.tables: dict[str, FakeTable] = {}
        self.local = [ipaddress.IPv4Address(a) for a in (addresses or [])]
        self.preferred = ipaddress.IPv4Address(preferred) if preferred else None
        self.forwarding = ip_forward
        self.present = True          # False: the namespace is gone; every call fails
        self.batches: list[str] = []  # every batch applied, in order
        self.cuts: list[int] = []     # every conntrack mark cut, in order
        self.conns: list[Connection] = []  # tracked connections (tests add them); cuts remove them
        self._refuse_next = 0
        self._refuse_patterns: list[str] = []
        self._lock = threading.RLock()

    # --- failure injection -------------------------------------------------------------------------------------
    def refuse_next(self, count: int = 1) -> None:
        """The next `count` batches are refused (as nft refuses a batch: nothing changes)."""
        self._refuse_next = count

    def refuse_matching(self, text: str | None) -> None:
        """Refuse every batch containing `text` (None: stop refusing)."""
        self._refuse_patterns = [] if text is None else self._refuse_patterns + [text]

    def gone(self, present: bool = False) -> None:
        """The namespace disappears (or comes back, with present=True, empty like a re-created one)."""
        self.present = present
        if present:
            self.tables.clear()

    def _check(self, what: str) -> None:
        if not self.present:
            raise KernelError(f"{what}: network namespace does not exist")

    # --- the interface -----------------------------------------------------------------------------------------
    def apply(self, batch: str | Sequence[str], *, large: bool = False) -> None:
        batch = batch if isinstance(batch, str) else "".join(batch)
        with self._lock:
            self._check("applying change")
            if self._refuse_next > 0:
                self._refuse_next -= 1
                raise KernelError("applying change: Error: Could not process rule: Operation not permitted (injected)")
            for pattern in self._refuse_patterns:
                if pattern in batch:
                    raise KernelError(f"applying change: Error: refused batch containing {pattern!r} (injected)")
            work = copy.deepcopy(self.tables)
            _Batch(work).run(batch)  # raises KernelError; `work` is then dropped: all or nothing
            self.tables = work
            self.batches.append(batch)

    def table_shape(self, table: str) -> dict[str, int] | None:
        with self._lock:
            self._check("checking tables")
            t = self.tables.get(table)
            return None if t is None else {name: len(rules) for name, rules in t.chains.items()}

    def has_element(self, table: str, element: Sentinel) -> bool:
        with self._lock:
            self._check("checking an element")
            t = self.tables.get(table)
            return t is not None and element.set_name in t.sets and element.key in t.sets[element.set_name].elements

    def read_counters(self, table: str, set_name: str, *, nonzero: bool = False) -> dict[int, tuple[int, int]]:
        with self._lock:
            self._check("reading counters")
            s = self._set(table, set_name)
            counts = {int(e): s.counters.get(e, (0, 0)) for e in s.elements}
            return {k: v for k, v in counts.items() if v != (0, 0)} if nonzero else counts

    def read_addresses(self) -> Addresses:
        with self._lock:
            self._check("reading addresses")
            return list(self.local), self.preferred

    def cut(self, marks: list[int]) -> None:
        with self._lock:
            self._check("cutting open connections")
            self.cuts.extend(marks)
            self.conns = [c for c in self.conns if c.mark not in marks]

    def connections(self, to: str | None = None) -> list[Connection]:
        with self._lock:
            self._check("listing connections")
            return [c for c in self.conns if to is None or c.dst == to]

    def cut_connection(self, conn: Connection) -> None:
        with self._lock:
            self._check("cutting a connection")
            self.conns = [c for c in self.conns if c != conn]

    def ip_forward(self, enable: bool) -> bool:
        with self._lock:
            self._check("checking net.ipv4.ip_forward")
            if not self.forwarding and enable:
                self.forwarding = True
            return self.forwarding

    def close(self) -> None:
        pass

    # --- for tests -----------------------------------------------------------------------------------------------
    def _set(self, table: str, name: str) -> FakeSet:
        t = self.tables.get(table)
        if t is None or name not in t.sets:
            raise KernelError(f"reading counters: Error: No such file or directory: {table} {name}")
        return t.sets[name]

    def elements(self, table: str, name: str) -> dict[str, str | None]:
        """The elements of a set or map now ({} when absent)."""
        with self._lock:
            t = self.tables.get(table)
            return dict(t.sets[name].elements) if t and name in t.sets else {}

    def count(self, table: str, set_name: str, element: int, packets: int, bytes_: int) -> None:
        """Traffic passed: add to an element's counters (as the kernel's counter would)."""
        with self._lock:
            s = self._set(table, set_name)
            old = s.counters.get(str(element), (0, 0))
            s.counters[str(element)] = (old[0] + packets, old[1] + bytes_)

    def dump(self) -> str:
        """Everything, as sorted text: two dumps are equal exactly when the kernels hold the same state."""
        lines: list[str] = []
        with self._lock:
            for tname in sorted(self.tables):
                t = self.tables[tname]
                lines.append(f"table ip {tname}")
                for sname in sorted(t.sets):
                    s = t.sets[sname]
                    lines.append(f"  {s.kind} {sname} {{ {s.spec} }}")
                    for key in sorted(s.elements):
                        data = s.elements[key]
                        lines.append(f"    {key}" + (f" : {data}" if data is not None else ""))
                for cname in sorted(t.chains):
                    lines.append(f"  chain {cname}")
                    lines.extend(f"    {rule}" for rule in t.chains[cname])
        return "\n".join(lines) + ("\n" if lines else "")


class _Batch:
    """Applies one batch of render.py's nft text to a copy of the tables; raises KernelError on the first
    command nft would refuse."""

    def __init__(self, tables: dict[str, FakeTable]) -> None:
        self.tables = tables

    def fail(self, line: str, reason: str) -> None:
        raise KernelError(f"applying change: Error: {reason}: {line.strip()[:120]}")

    def table(self, name: str, line: str) -> FakeTable:
        if name not in self.tables:
            self.fail(line, "No such file or directory (table)")
        return self.tables[name]

    def run(self, text: str) -> None:
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            m = re.fullmatch(rf"table {_TABLE} \{{", line)
            if m:
                i = self.block(m.group(1), lines, i)
                continue
            self.command(line)

    def block(self, name: str, lines: list[str], i: int) -> int:
        t = self.tables.setdefault(name, FakeTable())
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if line == "}":
                return i
            m = re.fullmatch(r"(map|set) (\w+) \{ (.*?)(?:elements = \{ (.*) \} )?\}", line)
            if m:
                self.new_set(t, m.group(1), m.group(2), m.group(3), line)
                if m.group(4):
                    self.add_elements(t.sets[m.group(2)], _items(m.group(4)), line)
                continue
            m = re.fullmatch(r"chain (\w+) \{", line)
            if m:
                rules: list[str] = []
                while i < len(lines) and lines[i].strip() != "}":
                    rule = lines[i].strip()
                    i += 1
                    if rule and not rule.startswith("type "):
                        rules.append(_norm(rule))
                i += 1
                t.chains[m.group(1)] = rules
                continue
            self.fail(line, "syntax error (fake kernel does not know this)")
        self.fail(name, "syntax error, unterminated table block")
        return i

    def new_set(self, t: FakeTable, kind: str, name: str, spec: str, line: str) -> None:
        spec = _norm(spec)
        if name in t.sets:
            if t.sets[name].spec != spec or t.sets[name].kind != kind:
                self.fail(line, "Could not process rule: File exists (set of another type)")
            return
        t.sets[name] = FakeSet(kind, spec)

    def add_elements(self, s: FakeSet, items: list[str], line: str) -> None:
        for item in items:
            key, _, data = item.partition(" : ")
            key, value = _norm(key), (_norm(data) if s.kind == "map" else None)
            if s.kind == "map" and not data:
                self.fail(line, "syntax error, map element without data")
            if key in s.elements and s.elements[key] != value:
                self.fail(line, "Could not process rule: File exists")
            s.elements[key] = value

    def command(self, line: str) -> None:
        if m := re.fullmatch(rf"add table {_TABLE}", line):
            self.tables.setdefault(m.group(1), FakeTable())
        elif m := re.fullmatch(rf"delete table {_TABLE}", line):
            self.table(m.group(1), line)
            del self.tables[m.group(1)]
        elif m := re.fullmatch(rf"add (set|map) {_TABLE} (\w+) \{{ (.*) \}}", line):
            self.new_set(self.table(m.group(2), line), m.group(1), m.group(3), m.group(4), line)
        elif m := re.fullmatch(rf"add chain {_TABLE} (\w+) \{{ .* \}}", line):
            self.table(m.group(1), line).chains.setdefault(m.group(2), [])
        elif m := re.fullmatch(rf"flush chain {_TABLE} (\w+)", line):
            chains = self.table(m.group(1), line).chains
            if m.group(2) not in chains:
                self.fail(line, "No such file or directory (chain)")
            chains[m.group(2)] = []
        elif m := re.fullmatch(rf"add rule {_TABLE} (\w+) (.+)", line):
            chains = self.table(m.group(1), line).chains
            if m.group(2) not in chains:
                self.fail(line, "No such file or directory (chain)")
            chains[m.group(2)].append(_norm(m.group(3)))
        elif m := re.fullmatch(rf"(add|delete) element {_TABLE} (\w+) \{{ (.*) \}}", line):
            t = self.table(m.group(2), line)
            if m.group(3) not in t.sets:
                self.fail(line, "No such file or directory (set)")
            s = t.sets[m.group(3)]
            if m.group(1) == "add":
                self.add_elements(s, _items(m.group(4)), line)
            else:
                for key in _items(m.group(4)):
                    if key not in s.elements:
                        self.fail(line, "Could not process rule: No such file or directory (element)")
                    del s.elements[key]
                    s.counters.pop(key, None)
        else:
            self.fail(line, "syntax error (fake kernel does not know this)")
