"""`labgate install` / `uninstall` tests: the command as a real subprocess, into a staged tree (`--root`), and the
unit it writes run as a real unprivileged system user (tests/install/unit_sandbox.py).

Another user must be able to run labgate for the second kind. This checkout's own `labgate` is used when that
user can run it; when its Python lives in a folder closed to others (pyenv under /root, say), a stand-in is made:
the system's Python of the same version, seeing this interpreter's packages (site-packages, the editable
checkout). The checkout itself must be readable by others either way, as any installed labgate is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from labgate.cli import install
from tests.harness import require

VENV_LABGATE = str(Path(sys.executable).parent / "labgate")


@dataclass
class Runtime:
    """A `labgate` program and a Python that a given user can run (the second one runs unit_sandbox's last stage)."""

    labgate: str
    python: str


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> "Ran":
        assert self.returncode == 0, f"exit {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        return self

    def actions(self) -> list[tuple[str, str]]:
        """The (action, path) lines install and uninstall print, before their closing advice."""
        found = []
        for line in self.stdout.splitlines():
            if not line.strip():
                break
            action, _, what = line.partition(" ")
            found.append((action, what.strip()))
        return found


def labgate(*args: str, env: dict[str, str] | None = None) -> Ran:
    """`python -m labgate ARGS` as this test's user."""
    proc = subprocess.run([sys.executable, "-m", "labgate", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def shared_tmpdir(prefix: str) -> Path:
    """A fresh folder others may enter (pytest's tmp_path is inside a 0700 folder): the caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def runtime_for(user: str, workdir: Path) -> Runtime:
    """What `user` can run: this checkout's labgate, or a stand-in made in `workdir` (see the module docstring)."""
    if install.run_as_problem(user, [VENV_LABGATE, "--help"]) is None:
        return Runtime(VENV_LABGATE, sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(f"python{version}", path="/usr/bin:/usr/local/bin")
    require(system is not None, f"user {user} cannot run {VENV_LABGATE} (its Python is closed to others) and "
                                f"there is no system python{version} to stand in for it")
    sites = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    script = workdir / "bin" / "labgate"
    script.parent.mkdir(mode=0o755)
    # -S: not the system's own dist-packages, only this interpreter's packages (their .pth files included).
    script.write_text(f"#!{system} -S\nimport site, sys\nfor d in {sites!r}:\n    site.addsitedir(d)\n"
                      "from labgate.cli.main import main\nsys.exit(main())\n")
    script.chmod(0o755)
    problem = install.run_as_problem(user, [str(script), "--help"])
    require(problem is None, f"user {user} cannot run labgate from this checkout ({problem}): clone it where "
                             "other users may read it")
    return Runtime(str(script), system)


@pytest.fixture
def service_user() -> Iterator[str]:
    """A real system user with a unique name, made by install's own code and removed afterwards, even on failure."""
    require(os.geteuid() == 0, "making a system user needs root")
    for program in ("useradd", "userdel", "setpriv"):
        require(shutil.which(program) is not None, f"{program} is missing (Debian: passwd, util-linux)")
    name = "lgtest" + uuid.uuid4().hex[:8]
    try:
        assert install.ensure_system_user(name, home=Path("/nonexistent")) == "created"
        yield name
    finally:
        install.remove_system_user(name)
        assert not install.user_exists(name) and not install.group_exists(name)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = shared_tmpdir("lginstall")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
