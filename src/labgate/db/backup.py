"""Online copies of labgate's SQLite database and restores from them, made with SQLite's backup API.

Why the backup API and not a file copy: `cp` of a database being written (and of its -wal file, a moment later)
can give a torn copy. One `backup()` step takes one read transaction on the source, so the copy is the database
exactly as committed when the step began; in WAL mode a reader never blocks a writer, so `labgate serve` keeps
answering while the copy is made. The copy is written beside its destination under a temporary name, checked
(`PRAGMA integrity_check`, labgate's tables, the schema revision), made durable, and only then renamed into place:
a failed or interrupted backup never leaves a partial file under the name asked for.

A restore goes the other way, into the configured file, and only while no other process has that file open (a
running server's port bitmaps, sessions and kernel rules would no longer match the database under it). The file it
replaces is first copied beside it (`<file>.before-restore-<UTC time>`). Forward ids are never handed out twice,
even across a restore of an older backup: the AUTOINCREMENT counters keep the higher of the two files' values
(a forward id is a connection mark; see db/ids.py).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.exc import SQLAlchemyError

from labgate.db.migrate import head_revision, known_revision, upgrade
from labgate.db.session import Database

SQLITE_HEADER = b"SQLite format 3\x00"
# Tables every labgate database has had since the first revision.
LABGATE_TABLES = frozenset({"alembic_version", "forwards", "tokens", "port_allocations"})


class BackupError(Exception):
    """A backup or restore that cannot be done; nothing was changed. `message` says what, `hint` what to do."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


@dataclass(frozen=True)
class Copy:
    """A checked labgate database file: its size in bytes, schema revision and number of forwards."""

    path: Path
    size: int
    revision: str | None
    forwards: int


@dataclass(frozen=True)
class Restored:
    """What `restore` did: the copy it restored, where the replaced database was kept (None: there was none), and
    the schema revision before and after the migration that followed."""

    source: Copy
    kept: Path | None
    revision_before: str | None
    revision_after: str | None


def backup(database: str | os.PathLike[str], dest: str | os.PathLike[str], *, force: bool = False) -> Copy:
    """Copy the SQLite database file `database` to `dest` while it may be in use, and check the copy.

    Raises BackupError, leaving `dest` untouched, when `dest` exists (unless `force`), when its folder does not, or
    when the copy fails its checks."""
    source = Path(database)
    target = Path(dest).absolute()
    if not source.is_file():
        raise BackupError(f"there is no database file at {source}",
                          "check [server] database and data_dir (`labgate config` shows them)", exit_code=3)
    if target.is_dir():
        raise BackupError(f"{target} is a folder", f"give a file name, e.g. {target / 'labgate-backup.db'}", 2)
    if not target.parent.is_dir():
        raise BackupError(f"folder {target.parent} does not exist", "create it first, or choose another path", 3)
    if target.exists():
        if _same_file(source, target):
            raise BackupError(f"{target} is the database itself", "choose another path for the copy", 2)
        if not force:
            raise BackupError(f"{target} already exists", "choose another name, or pass --force to replace it", 4)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        _create_private(temp)
        _copy(source, temp)
        copy = inspect(temp, require_known=False)
        _fsync(temp)
        os.replace(temp, target)
        _fsync(target.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source} to {target}: {exc}",
                          "is the disk full, or the database unreadable? (`labgate gateway ls` shows problems)") \
            from None
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}", "check the folder's free space and "
                          "permissions") from None
    finally:
        for leftover in (temp, Path(f"{temp}-journal"), Path(f"{temp}-wal"), Path(f"{temp}-shm")):
            leftover.unlink(missing_ok=True)
    return replace(copy, path=target)


def inspect(path: str | os.PathLike[str], *, require_known: bool = True) -> Copy:
    """Check that `path` is an intact labgate SQLite database (at a schema revision this labgate knows, when
    `require_known`), reading it only. Raises BackupError saying what it is not."""
    file = Path(path).absolute()
    try:
        with open(file, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        size = file.stat().st_size
    except FileNotFoundError:
        raise BackupError(f"{file} does not exist", "give the path of a file `labgate db backup` wrote", 3) from None
    except IsADirectoryError:
        raise BackupError(f"{file} is a folder", "give the path of a file `labgate db backup` wrote", 2) from None
    except OSError as exc:
        raise BackupError(f"cannot read {file}: {exc.strerror or exc}", "check its permissions") from None
    if header != SQLITE_HEADER:
        raise BackupError(f"{file} is not a SQLite database", "give the path of a file `labgate db backup` wrote", 2)
    try:
        con = sqlite3.connect(f"file:{quote(str(file))}?mode=ro", uri=True, timeout=30)
        try:
            problems = [row[0] for row in con.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"{file} is damaged (integrity_check: {problems[0]})",
                                  "use another backup; keep this one for investigation")
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = LABGATE_TABLES - tables
            if missing:
                raise BackupError(f"{file} is a SQLite database but not labgate's (no {', '.join(sorted(missing))} "
                                  "table)", "give the path of a file `labgate db backup` wrote", 2)
            revision = con.execute("SELECT version_num FROM alembic_version").fetchone()
            forwards = con.execute("SELECT count(*) FROM forwards").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {file} as a SQLite database: {exc}",
                          "give the path of a file `labgate db backup` wrote", 2) from None
    rev = revision[0] if revision else None
    if rev is None:
        raise BackupError(f"{file} has labgate's tables but no schema revision",
                          "give the path of a file `labgate db backup` wrote", 2)
    if require_known and not known_revision(rev):
        raise BackupError(f"{file} is at schema revision {rev}, newer than this labgate knows (its newest is "
                          f"{head_revision()})", "restore it with the labgate version that wrote it", 4)
    return Copy(file, size, rev, forwards)


def restore(source: str | os.PathLike[str], database: str | os.PathLike[str], *, force: bool = False) -> Restored:
    """Replace the SQLite database file `database` with the labgate database `source` (checked first), then
    migrate it to this labgate's schema.

    Raises BackupError, changing nothing, when `source` is not an intact labgate database at a revision this
    labgate knows, when another process has `database` open (a running labgate), or when `database` already
    holds data and `force` is not given. With `force`, the replaced database is first copied beside it."""
    found = inspect(source)
    target = Path(database).absolute()
    if target.exists() and _same_file(found.path, target):
        raise BackupError(f"{found.path} is the database itself", "give the path of a backup", 2)
    users = processes_using(target)
    if users:
        who = ", ".join(f"pid {pid} ({command})" for pid, command in users[:3])
        raise BackupError(f"{target} is in use by {who}",
                          "stop labgate first (e.g. `systemctl stop labgate`), then restore", 4)
    existing = _holds_data(target)
    if existing and not force:
        raise BackupError(f"{target} already holds a database",
                          "pass --force to replace it (a copy of it is kept beside it, *.before-restore-*)", 4)
    kept = None
    counters: dict[str, int] = {}
    if existing:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = target.with_name(f"{target.name}.before-restore-{stamp}")
        backup(target, kept)
        counters = _counters(target)
    else:
        if not target.parent.exists():
            target.parent.mkdir(parents=True, mode=0o700)
        target.unlink(missing_ok=True)  # an empty file: made again, private
        _create_private(target, owner_of=target.parent)
    try:
        _copy(found.path, target)
        _keep_counters(target, counters)
    except sqlite3.Error as exc:
        where = f"; the previous database is kept in {kept}" if kept else ""
        raise BackupError(f"cannot restore into {target}: {exc}{where}", "check the disk's free space and the "
                          "file's permissions, then restore again") from None
    db = Database(f"sqlite:///{target}")
    try:
        before, after = upgrade(db.engine)
    except SQLAlchemyError as exc:
        raise BackupError(f"restored {found.path} into {target}, but migrating it failed: "
                          f"{str(getattr(exc, 'orig', None) or exc).splitlines()[0]}",
                          "`labgate db upgrade` tries again and says why it fails") from None
    finally:
        db.dispose()
    return Restored(found, kept, before, after)


def processes_using(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(pid, command line) of the other processes that have the database file at `path` (or its -wal or -shm
    file) open, from /proc. Only processes this user may inspect are seen: all of them as root."""
    names = {str(Path(path).absolute()) + suffix for suffix in ("", "-wal", "-shm")}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(_readlink(f"/proc/{entry.name}/fd/{fd}") in names for fd in fds):
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                found.append((int(entry.name), cmdline.decode(errors="replace")[:80] or "?"))
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
    return found


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _copy(source: Path, target: Path) -> None:
    """Copy the database at `source` into the (empty or existing) database file `target` in one backup step, and
    leave `target` in rollback-journal mode: one self-contained file, no -wal beside it."""
    src = sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(str(target), timeout=30)
        try:
            # Out of WAL mode first (folding in what its -wal holds): a backup into a WAL database with another
            # page size fails.
            dst.execute("PRAGMA journal_mode=DELETE")
            src.backup(dst)  # pages=-1: the whole database in one step, i.e. one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _counters(path: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    try:
        return {name: seq for name, seq in con.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.OperationalError:  # no AUTOINCREMENT table
        return {}
    finally:
        con.close()


def _keep_counters(path: Path, counters: dict[str, int]) -> None:
    """Raise the AUTOINCREMENT counters of the restored database to those of the one it replaced."""
    if not counters:
        return
    con = sqlite3.connect(str(path), timeout=30)
    try:
        with con:
            for name, seq in counters.items():
                if con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is None:
                    continue
                raised = con.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name))
                if raised.rowcount == 0:
                    con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq))
    finally:
        con.close()


def _holds_data(path: Path) -> bool:
    """Whether the file at `path` is a database with any table (an empty file, or none, is not)."""
    if not path.exists() or (path.stat().st_size == 0 and not Path(f"{path}-wal").exists()):
        return False
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return True  # something unreadable is still something to keep


def _create_private(path: Path, owner_of: Path | None = None) -> None:
    """Create `path` empty, readable by its owner only (a copy holds token hashes); as root, owned by the owner
    of `owner_of` (the data folder: the service's user must be able to open a database restored for it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if owner_of is not None and os.geteuid() == 0:
            st = owner_of.stat()
            os.fchown(fd, st.st_uid, st.st_gid)
    finally:
        os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
