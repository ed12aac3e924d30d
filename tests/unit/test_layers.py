"""The layers of docs/design.md, kept true: every import inside src/labgate (function-level and TYPE_CHECKING ones
included) goes to a layer its module may use."""

from __future__ import annotations

import ast
from pathlib import Path

import labgate

ROOT = Path(labgate.__file__).parent
LEAVES = {"config", "events", "keys", "periodic", "inline_secrets", "logs", "__init__"}

# layer -> the layers it may import (besides itself and the leaves)
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "db": set(),
    "dataplane": set(),
    "core": {"db", "dataplane"},
    "workers": {"db", "dataplane"},
    # The OpenStack monitor: beside the workers, and it changes forwards (retarget, delete, orphan) through core.
    "openstack": {"core", "db", "dataplane"},
    "api": {"core", "db", "dataplane", "service"},  # service: the type of the running service the routes serve
    "service": {"api", "agent", "core", "db", "dataplane", "workers", "openstack"},
    # The agent role (follows the database for the gateways this process programs): part of the running service.
    "agent": {"db", "service"},
    "client": set(),
    "lab": {"dataplane"},
    "cli": {"agent", "api", "client", "core", "db", "dataplane", "lab", "service", "workers"},
    "__main__": {"cli"},  # python -m labgate
}


def layer_of(module: str) -> str:
    """'labgate.core.forwards' -> 'core'; leaves -> 'leaf'."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return "leaf" if top in LEAVES else top


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + (["__init__"] if len(parts) == 2 else [])
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("labgate")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labgate") \
                and node.level == 0:
            found.add(node.module)
    return found


def test_imports_lean_one_way() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        mine = layer_of(module_name(path))
        assert mine in ALLOWED, f"{path} is in no layer of docs/design.md"
        for target in imports(path):
            theirs = layer_of(target)
            if theirs not in (mine, "leaf") and theirs not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(ROOT)} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_leaves_import_only_leaves() -> None:
    for name in LEAVES - {"__init__"}:
        path = ROOT / f"{name}.py"
        if not path.exists():
            path = ROOT / name / "__init__.py"
        files = [path] if path.name != "__init__.py" else sorted(path.parent.rglob("*.py"))
        for f in files:
            for target in imports(f):
                assert layer_of(target) == "leaf", f"{f.relative_to(ROOT)} imports {target}"
