"""`labgate install` and `labgate uninstall`: the labgate system user, /etc/labgate/labgate.toml, /var/lib/labgate
and the systemd units, on this machine (as root) or staged in a tree for a package (`--root DIR`).

Idempotent: a second install changes nothing, an edited config is never overwritten, a unit that differs from
what this version writes is replaced (local changes belong in drop-ins). The units and the config are templates
in `install_files/`; `tests/install/` checks them with `systemd-analyze` and runs the unit's command line as an
unprivileged user with the unit's two capabilities.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Annotated, Optional

import typer

from labgate.cli.output import fail
from labgate.client.errors import LabgateError, ValidationFailed

CONFIG_DIR = Path("/etc/labgate")
CONFIG = CONFIG_DIR / "labgate.toml"
DATA_DIR = Path("/var/lib/labgate")
LOG_DIR = Path("/var/log/labgate")  # the units' LogsDirectory=, made by systemd at start
UNIT_DIR = Path("/etc/systemd/system")
SERVICE = "labgate.service"
AGENT = "labgate-agent.service"
UNITS = (SERVICE, AGENT)
USER = "labgate"
# The user's comment (GECOS) marks it as made by `labgate install`: uninstall removes no user without it.
USER_COMMENT = "labgate port-forwarding gateway"
USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")

RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="stage the files in this tree for a package: paths prefixed by DIR, no user made or removed, "
                   "no systemctl", metavar="DIR")]
UserOpt = Annotated[Optional[str], typer.Option(
    "--user", help="the system user (and group) the units run as [default: labgate]")]
UnitDirOpt = Annotated[Path, typer.Option(
    "--unit-dir", help="where the units go (a package: /usr/lib/systemd/system)", metavar="DIR")]


class InstallError(LabgateError):
    """Installing or uninstalling cannot go on; the message says what, the hint what to do."""


@dataclass
class Layout:
    """Where things go: the real paths (what the units and the config name) and, with --root, where they are
    written."""

    root: Path | None
    unit_dir: Path = UNIT_DIR

    def at(self, path: Path) -> Path:
        return path if self.root is None else self.root / path.relative_to("/")

    def unit(self, name: str) -> Path:
        return self.at(self.unit_dir / name)


@dataclass
class Report:
    """What was done, one line per thing, in order; `changed` says whether the units changed."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    units_changed: bool = False

    def add(self, action: str, what: str) -> None:
        self.lines.append((action, what))
        typer.echo(f"{action:<10} {what}")


# --- templates -------------------------------------------------------------------------------------------------
def _template(name: str) -> Template:
    return Template(resources.files("labgate.cli").joinpath("install_files", name).read_text())


def systemd_quote(word: str) -> str:
    """One word of an Exec= line as systemd reads it: quoted when it has spaces or quotes, '%' and '$' doubled
    (specifiers and variables are expanded otherwise)."""
    if any(c in word for c in "\n\r\0"):
        raise ValidationFailed(f"{word!r} cannot go in a unit file (it has a line break or NUL)")
    word = word.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_units(labgate: str, user: str, group: str) -> dict[str, str]:
    """The text of both units: ExecStart runs `labgate` (an absolute path) as user:group, in the sandbox."""
    sandbox = _template("sandbox.conf").substitute(data_dir=DATA_DIR)
    values = dict(labgate=systemd_quote(labgate), user=user, group=group, config=CONFIG, sandbox=sandbox)
    return {name: _template(name).substitute(values) for name in UNITS}


def render_config(user: str) -> str:
    return _template("labgate.toml").substitute(user=user)


# --- files -----------------------------------------------------------------------------------------------------
def write_file(path: Path, text: str, mode: int, gid: int | None = None) -> None:
    """Replace `path` atomically with `text`, with exactly `mode` (and group `gid`) from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            if gid is not None:
                os.fchown(f.fileno(), 0, gid)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dir(path: Path, mode: int, uid: int | None = None, gid: int | None = None) -> bool:
    """Create `path` (and missing parents, 0755) with `mode` and owner; False when it already exists."""
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    path.chmod(mode)
    return True


def install_unit(path: Path, text: str, report: Report) -> None:
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = None
    if old == text:
        report.add("unchanged", str(path))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, text, 0o644)
    report.units_changed = True
    report.add("created" if old is None else "updated", str(path))


def install_config(layout: Layout, text: str, gid: int | None, report: Report) -> None:
    """/etc/labgate (0750) and labgate.toml (0640), both root's and of the service's group: it may hold a
    database password. An existing file is never touched."""
    made = make_dir(layout.at(CONFIG_DIR), 0o750, 0 if gid is not None else None, gid)
    if made:
        report.add("created", str(layout.at(CONFIG_DIR)))
    path = layout.at(CONFIG)
    if gid is not None:
        _adopt_orphans([layout.at(CONFIG_DIR), path], gid, report)
    if path.exists():
        if path.read_text() == text:
            report.add("unchanged", str(path))
        else:
            report.add("kept", f"{path} (edited: not overwritten)")
        return
    write_file(path, text, 0o640, gid)
    report.add("created", str(path))


def _adopt_orphans(paths: list[Path], gid: int, report: Report) -> None:
    """Give `gid` the paths whose group no longer exists: the group of a user uninstall removed (without --purge),
    whose new incarnation may have another id."""
    for path in paths:
        try:
            st = path.stat()
            grp.getgrgid(st.st_gid)
        except FileNotFoundError:
            continue
        except KeyError:
            os.chown(path, -1, gid)
            report.add("chgrp", f"{path} (group {st.st_gid} no longer exists, now {grp.getgrgid(gid).gr_name})")


def ensure_data_dir(path: Path, uid: int | None, gid: int | None, report: Report) -> None:
    """The database's folder: 0700 (labgate's own rule: docs/security.md, "File modes") and the user's. One that
    is someone else's (a removed user's, or root's from an earlier `labgate serve`) is given, with what it holds,
    to this one: the service could not open its database otherwise."""
    if make_dir(path, 0o700, uid, gid):
        report.add("created", str(path))
        return
    st = path.stat()
    if uid is None or (st.st_uid, st.st_gid) == (uid, gid):
        report.add("unchanged", str(path))
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, uid, gid)
    report.add("chowned", f"{path} (was uid {st.st_uid}, now {pwd.getpwuid(uid).pw_name})")


# --- the user --------------------------------------------------------------------------------------------------
def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def _nologin() -> str:
    return next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def useradd_argv(name: str, home: Path) -> list[str]:
    """The command that makes the service user: a system account, no login, no home made, its own group."""
    group = ["--gid", name] if group_exists(name) else ["--user-group"]
    return ["useradd", "--system", *group, "--home-dir", str(home), "--no-create-home", "--shell", _nologin(),
            "--comment", USER_COMMENT, name]


def ensure_system_user(name: str, home: Path = DATA_DIR) -> str:
    """Make system user `name` (and its group) unless it exists: "created" or "unchanged"."""
    if user_exists(name):
        return "unchanged"
    proc = _run(useradd_argv(name, home))
    if proc.returncode:
        raise InstallError(f"useradd {name} failed: {proc.stderr.strip() or proc.returncode}",
                           hint="create the user yourself (useradd --system ...), then run install again")
    return "created"


def remove_system_user(name: str) -> str:
    """Remove user `name` and its group if `labgate install` made it: "removed", "absent" or "kept" (not ours)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if group_exists(name):
            _run(["groupdel", name])
        return "absent"
    if entry.pw_gecos != USER_COMMENT:
        return "kept"
    proc = _run(["userdel", name])
    if proc.returncode:
        raise InstallError(f"userdel {name} failed: {proc.stderr.strip() or proc.returncode}",
                           hint=f"stop what runs as {name} (`ps -u {name}`), then run uninstall again")
    if group_exists(name) and not grp.getgrnam(name).gr_mem:
        _run(["groupdel", name])
    return "removed"


def run_as_problem(user: str, argv: list[str]) -> str | None:
    """Why `user` cannot run argv (e.g. the labgate program in a folder it may not enter), or None. Not through
    setpriv: it execs with root's capabilities still in effect, so a program in a folder closed to the user
    would pass."""
    runuser = shutil.which("runuser")
    if runuser is None:
        return None
    proc = _run([runuser, "-u", user, "--", *argv])
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


# --- helpers of the commands -----------------------------------------------------------------------------------
def find_labgate() -> str | None:
    """The absolute path of the `labgate` program running now: argv[0] when it is that program, else the one next
    to this Python (a virtualenv's), else the one on PATH."""
    candidates = []
    if os.path.basename(sys.argv[0]) == "labgate":
        candidates.append(os.path.abspath(sys.argv[0]))
    candidates += [os.path.join(os.path.dirname(sys.executable), "labgate"), shutil.which("labgate")]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def systemd_running() -> bool:
    """Whether systemd is the init system of this machine now (what `sd_booted()` checks)."""
    return os.path.isdir("/run/systemd/system")


def _systemctl(*args: str) -> None:
    proc = _run(["systemctl", *args])
    if proc.returncode:
        raise InstallError(f"systemctl {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}",
                           hint="see `journalctl -xe`; the files are in place, run install again once it is fixed")


def _check_user_name(user: str) -> None:
    if not USER_NAME_RE.fullmatch(user):
        raise ValidationFailed(f"user name {user!r} is not valid", hint="use [a-z_][a-z0-9_-]{0,30}, e.g. labgate")


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise InstallError(f"{command} changes this machine and needs root",
                           hint=f"run it as root (sudo labgate {command}), or stage the files in a tree with "
                                "--root DIR")


def _config_notes(path: Path) -> tuple[bool, list[str]]:
    """Whether the (new or kept) config loads, and what it means for the units: the error, gateways the units
    cannot enter."""
    from labgate.config import ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return False, [f"{exc} (labgate will not start until it is fixed)"]
    notes = [f"gateway {gw.name!r} is in namespace {gw.netns!r}: entering it needs CAP_SYS_ADMIN, which the units "
             f"do not give (see the comment in {SERVICE})" for gw in settings.gateway if gw.netns]
    if settings.openstack is not None:
        notes.append("[openstack] routers are namespaces: entering them needs CAP_SYS_ADMIN, which the units do "
                     f"not give (see the comment in {SERVICE})")
    return True, notes


# --- the commands ----------------------------------------------------------------------------------------------
def install(
    root: RootOpt = None,
    user: UserOpt = None,
    labgate: Annotated[Optional[str], typer.Option(
        "--labgate", help="the program ExecStart runs [default: this labgate]", metavar="PATH")] = None,
    unit_dir: UnitDirOpt = UNIT_DIR,
    enable: Annotated[bool, typer.Option("--enable", help="systemctl enable labgate.service")] = False,
    start: Annotated[bool, typer.Option("--start", help="systemctl start labgate.service")] = False,
) -> None:
    """Install labgate as a systemd service: its user, /etc/labgate/labgate.toml, /var/lib/labgate and the units
    labgate.service (enabled only with --enable) and labgate-agent.service (never enabled). Safe to run again."""
    try:
        _install(root, user or USER, labgate, unit_dir, enable, start)
    except LabgateError as exc:
        raise fail(exc) from None


def _install(root: Path | None, user: str, labgate: str | None, unit_dir: Path, enable: bool, start: bool) -> None:
    _check_user_name(user)
    if root is not None and (enable or start):
        raise ValidationFailed("--enable and --start act on this machine, not on a --root tree",
                               hint="the package enables the unit (e.g. dh_installsystemd), or the admin does")
    if root is None:
        _need_root("install")
        if start and not systemd_running():
            raise InstallError("--start needs systemd running as the init system, and it is not here",
                               hint="leave out --start; start `labgate serve` some other way")
    program = labgate or find_labgate()
    if program is None:
        raise InstallError("cannot tell where the labgate program is", hint="give it with --labgate PATH")
    if not os.path.isabs(program):
        raise ValidationFailed(f"--labgate {program} is not an absolute path",
                               hint="systemd runs ExecStart without a PATH search: give /the/full/path/labgate")
    layout = Layout(root, unit_dir)
    if root is None and not (os.path.isfile(program) and os.access(program, os.X_OK)):
        raise InstallError(f"{program} is not an executable file", hint="give the installed one with --labgate PATH")
    report = Report()

    uid = gid = None
    if root is None:
        report.add(ensure_system_user(user), f"user {user}")
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    else:
        root.mkdir(parents=True, exist_ok=True)
    install_config(layout, render_config(user), gid, report)
    ensure_data_dir(layout.at(DATA_DIR), uid, gid, report)
    group = grp.getgrgid(gid).gr_name if gid is not None else user
    for name, text in render_units(program, user, group).items():
        install_unit(layout.unit(name), text, report)

    loads, notes = _config_notes(layout.at(CONFIG))
    real = os.path.realpath(program)
    # On this machine, also the Python running this (a venv's labgate runs it); a staged tree names its own.
    for hidden in (program, real, *([sys.executable] if root is None else [])):
        if hidden.startswith(("/tmp/", "/var/tmp/")):
            # The units have PrivateTmp=yes: the service sees a /tmp of its own, without this program in it.
            notes.append(f"{hidden} is under {'/var/tmp' if hidden.startswith('/var/') else '/tmp'}, which the "
                         "units hide (PrivateTmp=yes): install labgate elsewhere (a package, or a venv in /opt) "
                         "before starting the service")
            break
    if root is None:
        # As the user, what the unit does first: start the program and read the config.
        check = ["config", "--config", str(CONFIG)] if loads else ["--help"]
        problem = run_as_problem(user, [program, *check])
        if problem:
            notes.append(f"user {user} cannot run `{program} serve --config {CONFIG}`: {problem} (the program, the "
                         "Python it starts and the config must be readable by that user, and every folder on the "
                         "way open to it)")
        _host_systemd(report, enable, start)
    for n in notes:
        typer.echo(f"note: {n}", err=True)
    typer.echo("")
    typer.echo(_next_steps(layout, user, program, enable, start))


def _host_systemd(report: Report, enable: bool, start: bool) -> None:
    if not systemd_running():
        typer.echo("note: systemd is not running here: no daemon-reload", err=True)
        return
    if report.units_changed:
        _systemctl("daemon-reload")
        report.add("ran", "systemctl daemon-reload")
    if enable:
        _systemctl("enable", SERVICE)
        report.add("enabled", SERVICE)
    if start:
        _systemctl("start", SERVICE)
        report.add("started", SERVICE)


def _next_steps(layout: Layout, user: str, program: str, enable: bool, start: bool) -> str:
    token = (f"runuser -u {user} -- {shlex.quote(program)} token create admin --admin --config {CONFIG}")
    if layout.root is not None:
        useradd = shlex.join(["useradd", "--system", "--user-group", "--home-dir", str(DATA_DIR),
                              "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", USER_COMMENT, user])
        return "\n".join([
            f"Staged in {layout.root}. On the target machine the package must, as root:",
            f"  make the user: {useradd}",
            f"    (or a sysusers.d line: u {user} - \"{USER_COMMENT}\" {DATA_DIR})",
            f"  give it its files: chgrp {user} {CONFIG_DIR} {CONFIG} && chown {user}:{user} {DATA_DIR}",
            f"  systemctl daemon-reload, and enable {SERVICE} if wanted ({AGENT} stays disabled)",
            f"  and have {program} there: the units' ExecStart runs it",
        ])
    steps = [f"Next: edit {CONFIG} (external_address, port_range, target_networks), then, as root:",
             f"  {token}      # the first API token, shown once"]
    if not start:
        steps.append(f"  systemctl {'start' if enable else 'enable --now'} labgate")
    steps.append(f"  labgate login --url http://127.0.0.1:3000       # with that token; see `systemctl status labgate`")
    return "\n".join(steps)


def uninstall(
    root: RootOpt = None,
    user: UserOpt = None,
    unit_dir: UnitDirOpt = UNIT_DIR,
    purge: Annotated[bool, typer.Option(
        "--purge", help=f"also remove {CONFIG} and {DATA_DIR} (the database: every forward and token)")] = False,
) -> None:
    """Remove the units and the user `labgate install` made; the config and the database only with --purge."""
    try:
        _uninstall(root, user, unit_dir, purge)
    except LabgateError as exc:
        raise fail(exc) from None


def unit_user(path: Path) -> str | None:
    """The User= of an installed unit, or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"^User=(\S+)\s*$", text, re.M)
    return found.group(1) if found else None


def _uninstall(root: Path | None, user: str | None, unit_dir: Path, purge: bool) -> None:
    if root is not None and not root.is_dir():
        raise ValidationFailed(f"--root {root} is not a folder", hint="give the tree `labgate install --root` made")
    if root is None:
        _need_root("uninstall")
    layout = Layout(root, unit_dir)
    user = user or unit_user(layout.unit(SERVICE)) or USER
    _check_user_name(user)
    report = Report()
    running = root is None and systemd_running()
    if running:
        for name in UNITS:
            # Fails quietly for a unit systemd does not know: there is nothing to stop then.
            if _run(["systemctl", "disable", "--now", name]).returncode == 0:
                report.add("stopped", f"{name} (and disabled)")
    for name in UNITS:
        path = layout.unit(name)
        if path.exists() or path.is_symlink():
            path.unlink()
            report.add("removed", str(path))
    if running:
        _systemctl("daemon-reload")
        report.add("ran", "systemctl daemon-reload")
    if root is None:
        result = remove_system_user(user)
        report.add(result, f"user {user}" + (" (not made by labgate install)" if result == "kept" else ""))
    if purge:
        _purge(layout, report)
    else:
        kept = [str(layout.at(p)) for p in (CONFIG, DATA_DIR) if layout.at(p).exists()]
        if kept:
            report.add("kept", ", ".join(kept) + " (--purge removes them)")
    if root is not None:
        typer.echo(f"\nOn the target machine the package must also remove the user: userdel {user}")


def _purge(layout: Layout, report: Report) -> None:
    """The config file (its folder too, unless other files are in it, such as TLS keys), the database folder and
    the event log folder."""
    config = layout.at(CONFIG)
    if config.exists():
        config.unlink()
        report.add("removed", str(config))
    folder = layout.at(CONFIG_DIR)
    if folder.is_dir():
        if any(folder.iterdir()):
            others = ", ".join(sorted(p.name for p in folder.iterdir()))
            report.add("kept", f"{folder} (other files are in it: {others})")
        else:
            folder.rmdir()
            report.add("removed", str(folder))
    for path in (layout.at(DATA_DIR), layout.at(LOG_DIR)):
        if path.is_symlink():
            raise InstallError(f"{path} is a symbolic link: not removed",
                               hint="remove it (and what it points to) by hand")
        if path.is_dir():
            shutil.rmtree(path)
            report.add("removed", str(path))
