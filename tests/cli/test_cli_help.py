"""`--help` of every command: plain flags (--help, --print, --down, --verify/--no-verify, ...) take no value, so
no type is shown beside them; options that take a value keep theirs. (Issue 9: every flag showed `<bool>`.)"""

from __future__ import annotations

import re
from typing import Any

import typer

from labgate.cli.main import app
from tests.cli.conftest import Cli

TYPE_TEXT = re.compile(r"<bool>|BOOLEAN|\bbool\b", re.IGNORECASE)


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as argv prefixes: (), ("forward",), ("forward", "add"), ..."""
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:  # typer's own (vendored) click classes
        paths.append(path)
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))

    walk(root, ())
    return paths


def flags_of(path: tuple[str, ...]) -> list[str]:
    """The long names of the flags (options without a value) of the command at path, --help included."""
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    names = ["--help"]
    for param in cmd.params:
        if getattr(param, "is_flag", False):
            names += [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
    return names


def test_no_type_is_shown_beside_plain_flags(cli: Cli) -> None:
    paths = command_paths()
    assert ("demo",) in paths and ("forward", "ls") in paths and ("connect",) in paths and len(paths) > 20
    results = cli.parallel(*[(*path, "--help") for path in paths])
    checked = 0
    for path, res in zip(paths, results):
        assert res.returncode == 0, (path, res)
        text = res.stdout
        assert not TYPE_TEXT.search(text), f"`labgate {' '.join((*path, '--help'))}` shows a bool type:\n{text}"
        for flag in flags_of(path):
            lines = [line for line in text.splitlines() if re.search(rf"(^|\s){re.escape(flag)}(\s|$)", line)]
            assert lines, (path, flag, text)
            # Between the flag's names and its help text there is no <type>.
            assert not re.search(r"<[a-z][a-z0-9_|\[\], ]*>", lines[0]), (path, flag, lines[0])
            checked += 1
    assert checked > 40


def test_options_with_a_value_keep_their_type(cli: Cli) -> None:
    demo, add = cli.parallel(("demo", "--help"), ("forward", "add", "--help"))
    port = next(line for line in demo.ok().stdout.splitlines() if "--port" in line)
    assert "<int>" in port, port
    gateway = next(line for line in add.ok().stdout.splitlines() if "--gateway" in line)
    assert "<str>" in gateway, gateway
