"""`labgate forward apply -f forwards.yaml`: create what is missing, leave what matches (same ids on a second run),
retarget what moved; a bad file is a usage error (exit 2) that changes nothing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.cli.conftest import Cli, Lab, assert_cli_error, contract, parse_table

FILE = """\
forwards:
  - name: centos1
    target_address: 10.9.0.5
    target_port: 22
    kind: centos
  - name: centos1
    target_address: 10.9.0.5
    target_port: 80
    kind: centos
    description: web
  - name: win1
    target_address: {win_address}
    target_port: 3389
    kind: windows
    allowed_sources: [203.0.113.0/24]
"""


def write(tmp_path: Path, text: str, name: str = "forwards.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def summary(forwards: list[dict]) -> list[tuple]:
    return [(f["id"], f["name"], f["target_address"], f["target_port"], f["external_port"]) for f in forwards]


def test_apply_creates_then_is_idempotent_then_retargets(logged_in: Cli, lab: Lab, tmp_path: Path) -> None:
    path = write(tmp_path, FILE.format(win_address="10.9.0.6"))
    first = logged_in("forward", "apply", "-f", str(path), "-o", "json").json()
    assert [(f["name"], f["target_address"], f["target_port"], f["kind"]) for f in first] == [
        ("centos1", "10.9.0.5", 22, "centos"), ("centos1", "10.9.0.5", 80, "centos"),
        ("win1", "10.9.0.6", 3389, "windows")]
    assert first[1]["description"] == "web" and first[2]["allowed_sources"] == ["203.0.113.0/24"]
    stored = lab.forwards()
    assert summary(stored) == summary(first)

    # Second run: the same forwards, nothing created or written.
    second = logged_in("forward", "apply", "-f", str(path), "-o", "json").json()
    assert summary(second) == summary(first)
    assert [contract(f) for f in lab.forwards()] == [contract(f) for f in stored]

    # The Windows VM got a new address: the same forward (id, external port) now points there.
    path = write(tmp_path, FILE.format(win_address="10.9.0.9"))
    third = logged_in("forward", "apply", "-f", str(path), "-o", "json").json()
    assert [f["id"] for f in third] == [f["id"] for f in first]
    assert third[2]["target_address"] == "10.9.0.9" and third[2]["external_port"] == first[2]["external_port"]
    after = lab.forwards()
    assert len(after) == 3
    assert after[2]["target_address"] == "10.9.0.9"
    assert [contract(f) for f in after[:2]] == [contract(f) for f in stored[:2]]  # the others untouched


def test_apply_plain_list_with_table_output(logged_in: Cli, lab: Lab, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        - {name: a, target_address: 10.9.0.11, target_port: 22}
        - {name: b, target_address: 10.9.0.12, target_port: 53, protocol: udp, external_port: 4090}
        """)
    rows = parse_table(logged_in("forward", "apply", "-f", str(path)).ok().stdout)
    assert [(r["name"], r["proto"], r["target"], r["external"]) for r in rows] == [
        ("a", "tcp", "10.9.0.11:22", "198.51.100.1:4000"), ("b", "udp", "10.9.0.12:53", "198.51.100.1:4090")]
    assert len(lab.forwards()) == 2


def test_apply_from_stdin(logged_in: Cli, lab: Lab) -> None:
    text = "- {name: s, target_address: 10.9.0.20, target_port: 22}\n"
    (fwd,) = logged_in("forward", "apply", "-f", "-", "-o", "json", input=text).json()
    assert (fwd["name"], fwd["target_address"]) == ("s", "10.9.0.20")
    assert [f["id"] for f in lab.forwards()] == [fwd["id"]]


def test_apply_bad_files_exit_2_and_change_nothing(logged_in: Cli, lab: Lab, tmp_path: Path) -> None:
    bad_yaml = write(tmp_path, "forwards: [\n  - name: a\n", "bad.yaml")
    unknown = write(tmp_path, """\
        - name: a
          target_address: 10.9.0.5
          target_port: 22
          pasword: hunter2
        """, "unknown.yaml")
    missing = write(tmp_path, "- {name: a, target_address: 10.9.0.5}\n", "missing.yaml")
    res_bad, res_unknown, res_missing = logged_in.parallel(
        ("forward", "apply", "-f", str(bad_yaml)), ("forward", "apply", "-f", str(unknown)),
        ("forward", "apply", "-f", str(missing)))
    for res, part in ((res_unknown, "entry 1"), (res_unknown, "unknown keys ['pasword']"),
                      (res_missing, "missing ['target_port']"), (res_bad, "not valid YAML")):
        assert_cli_error(res, 2, part)
    assert lab.forwards() == []


def test_apply_bad_yaml_error_is_one_line_plus_hint(logged_in: Cli, tmp_path: Path) -> None:
    """The CLI promises errors as one human line plus a hint, and the line must say where the file is broken.
    (A YAML syntax error used to print PyYAML's five-line message with no hint.)"""
    bad_yaml = write(tmp_path, "forwards: [\n  - name: a\n", "bad.yaml")
    assert_cli_error(logged_in("forward", "apply", "-f", str(bad_yaml)), 2, "not valid YAML", "line 2")


def test_apply_is_all_or_nothing_and_names_the_failing_entry(logged_in: Cli, lab: Lab, tmp_path: Path) -> None:
    """One request, one transaction: a bad entry applies nothing, and the error says which entry of the file it
    is (before: each entry was its own request, and a file half applied had to be untangled by hand)."""
    path = write(tmp_path, """\
        - {name: good, target_address: 10.9.0.5, target_port: 22}
        - {name: bad, target_address: 10.10.0.5, target_port: 22}
        - {name: good2, target_address: 10.9.0.6, target_port: 22}
        """)
    for extra in ((), ("-o", "json")):
        res = logged_in("forward", "apply", "-f", str(path), *extra)
        message, _ = assert_cli_error(res, 2, f"entry 2 of {path} (bad 10.10.0.5:22)", "outside the target networks",
                                      "nothing was applied")
        assert "forwards[1]" not in message
    assert lab.forwards() == []
    fixed = write(tmp_path, """\
        - {name: good, target_address: 10.9.0.5, target_port: 22}
        - {name: good2, target_address: 10.9.0.6, target_port: 22}
        """, "fixed.yaml")
    res = logged_in("forward", "apply", "-f", str(fixed), "-o", "json")
    assert res.returncode == 0, res
    assert [f["name"] for f in json.loads(res.stdout)] == ["good", "good2"]
    assert [f["name"] for f in lab.forwards()] == ["good", "good2"]
