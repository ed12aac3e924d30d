"""What a test run leaves in the working tree is ignored by git, so `git status` after `make test` shows only real
changes: pytest's cache, Hypothesis' example database (the schema fuzzing test), Python's byte code. Checked in a
fresh repository holding only this .gitignore and those files (the real tree's leftovers may carry their own
.gitignore, as recent Hypothesis versions write one, which would hide a missing rule)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.harness import require

ROOT = Path(__file__).resolve().parents[2]
LEFTOVERS = (".hypothesis/examples/0123abcd/4567", ".pytest_cache/v/cache/lastfailed",
             "src/labgate/__pycache__/lab.cpython-311.pyc", "tests/unit/__pycache__/test_x.cpython-311.pyc")


def test_test_run_leftovers_are_ignored(tmp_path: Path) -> None:
    require(shutil.which("git") is not None, "git is not installed")  # fails in CI, skips only outside it
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    for path in LEFTOVERS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert status == ["?? .gitignore"], status
