"""What every benchmark area shares: the sandbox that owns (and always removes) namespaces and processes, running
code and programs inside a namespace, statistics, and a description of the machine.

Isolation: every namespace is built by `labgate.lab.create_lab` under a prefix unique to this run ("lgb" + 4 hex
digits), so nothing the bench does can touch the host's own ruleset or interfaces, and its traffic never leaves
those namespaces (the API server listens on 127.0.0.1 of the host, nothing else does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from labgate import lab as lablib

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# --------------------------------------------------------------------------------------------------------------
# Namespaces and processes


def enter_netns(ns: str) -> None:
    """Move the *calling thread* into namespace ns (never call this from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        raise RuntimeError("enter_netns must not be called from the main thread")
    fd = os.open(os.path.join(lablib.NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
    finally:
        os.close(fd)


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread inside ns; sockets and child processes it creates belong to ns."""
    return lablib.in_netns(ns, fn)


def run_in_ns(ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a program inside ns without `ip netns exec` (the child inherits the namespace of the calling thread)."""
    def job() -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)

    proc = in_ns(ns, job)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc


def wait_for_tcp(ns: str | None, address: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on address:port (seen from ns, or the host when None)."""
    deadline = time.monotonic() + timeout

    def attempt() -> bool:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            return False

    while time.monotonic() < deadline:
        if (in_ns(ns, attempt) if ns else attempt()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {address}:{port} ({ns or 'host'}) after {timeout}s")


@dataclass
class Sandbox:
    """Owns everything the bench creates; `close()` removes it all, in reverse order, whatever happened before."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    labs: list[lablib.Lab] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    tmpdir: Path | None = None

    @property
    def prefix(self) -> str:
        return f"lgb{self.run_id}"

    def lab(self) -> lablib.Lab:
        """A new client/gateway/lab namespace trio, removed at close."""
        index = len(self.labs)
        lab = lablib.create_lab(f"{self.prefix}{index:02x}", subnet_index=index)
        self.labs.append(lab)
        return lab

    def drop_lab(self, lab: lablib.Lab) -> None:
        """Remove a lab now (frees its kernel memory early); close() will not need to."""
        lablib.destroy_lab(lab)

    def workdir(self) -> Path:
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"labgate-bench-{self.run_id}-"))
        return self.tmpdir

    def spawn(self, argv: Sequence[str], *, ns: str | None = None, **kw) -> subprocess.Popen:
        """Start a long-running program (in ns, or on the host), killed at close if still running."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc = in_ns(ns, lambda: subprocess.Popen(list(argv), **kw)) if ns else subprocess.Popen(list(argv), **kw)
        self.processes.append(proc)
        return proc

    def on_close(self, fn: Callable[[], None]) -> None:
        self.closers.append(fn)

    @staticmethod
    def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass

    def close(self) -> list[str]:
        """Remove everything; returns the errors met (cleanup goes on past each one)."""
        errors: list[str] = []
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                errors.append(f"closer: {exc}")
        for proc in reversed(self.processes):
            try:
                self.stop_process(proc, timeout=5)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"process {proc.pid}: {exc}")
        for lab in reversed(self.labs):
            try:
                lablib.destroy_lab(lab)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"lab {lab.prefix}: {exc}")
        try:  # a safety net: anything with this run's prefix that is still there
            lablib.destroy_labs(self.prefix)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"leftover labs: {exc}")
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return errors


# --------------------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict:
    """n, min, p50, p90, p99, max, mean of a sample (in the sample's unit)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": sum(values) / len(values)}


def timed_samples(fn: Callable[[int], None], *, n_max: int, budget_s: float, n_min: int = 5) -> list[float]:
    """Call fn(i) until n_max samples or budget_s seconds are spent (but at least n_min); return each duration (s)."""
    samples: list[float] = []
    started = time.monotonic()
    for i in range(n_max):
        if i >= n_min and time.monotonic() - started > budget_s:
            break
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return samples


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0 or math.isnan(value) or math.isnan(baseline):
        return None
    return value / baseline


# --------------------------------------------------------------------------------------------------------------
# The machine


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    import labgate

    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "python": platform.python_version(),
        "labgate": labgate.__version__,
        "nft": _first_line(["nft", "--version"]),
        "iptables": _first_line(["iptables", "-V"]),
        "iptables_legacy": _first_line(["iptables-legacy", "-V"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "socat": (_first_line(["sh", "-c", "socat -V | grep 'socat version'"]) or "").strip() or None,
    }


def git_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_modified": bool(status) if status is not None else None}


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------------------------------------------
# Profiling a server with py-spy (sampling, from outside the process: nothing to change in the server)


def py_spy_binary() -> str | None:
    """py-spy next to this interpreter (the venv: `.venv/bin/pip install py-spy`), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Profiler:
    """`py-spy record --format raw` (collapsed stacks) attached to a running process until stop().

    Every thread is sampled, idle ones too (--idle, so waiting shows), without pausing the process (--nonblocking:
    py-spy reads its memory while it runs), at `rate` samples a second. start() and stop() never raise: when py-spy
    is missing or cannot attach, `error` says why and the measurement it accompanies goes on."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.cpu_seconds: float | None = None
        self._t0 = 0.0
        self._cpu0: float | None = None

    def start(self) -> None:
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy is not installed (.venv/bin/pip install py-spy)"
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--output", str(self.out), "--format", "raw", "--nolineno",
             "--threads", "--idle", "--nonblocking", "--rate", str(self.rate)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # attaching takes a few hundred ms; an error shows up at once
        if self.proc.poll() is not None:
            self.error = f"py-spy could not attach ({self.proc.returncode}): {self.proc.stdout.read().strip()[-500:]}"
            self.proc = None
            return
        self._t0, self._cpu0 = time.monotonic(), process_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.seconds = time.monotonic() - self._t0
        cpu1 = process_cpu_seconds(self.pid)
        if cpu1 is not None and self._cpu0 is not None:
            self.cpu_seconds = cpu1 - self._cpu0
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            output, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        if not self.out.exists() or not self.out.stat().st_size:
            self.error = f"py-spy wrote no samples ({self.proc.returncode}): {(output or '').strip()[-500:]}"
        self.proc = None


# Where a sample's time goes, by the first frame (from the innermost one outwards) whose file is recognised.
PROFILE_GROUPS = (
    ("HTTP (uvicorn, h11)", ("uvicorn/", "h11/", "httptools/", "http/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("FastAPI / Starlette / anyio", ("fastapi/", "starlette/", "anyio/", "fastapi_offline/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("logging", ("logging/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
    ("labgate", ("labgate/",)),
)
DATABASE = "database (SQLite, in C)"
KERNEL = "nft / netlink / conntrack (kernel)"
WAITING = "waiting (idle threads, locks, queues)"
# Innermost Python frames that mean the thread is blocked: in C below them (lock, queue, select, child process).
_WAIT_LEAVES = (
    ("threading.py", ("wait", "join", "acquire", "_wait_for_tstate_lock")),
    ("queue.py", ("get", "put")),
    ("selectors.py", ("select",)),
    ("concurrent/futures/thread.py", ("_worker",)),
    ("anyio/_backends/_asyncio.py", ("WorkerThread.run",)),
    ("subprocess.py", ("wait", "_wait", "_try_wait", "communicate", "_communicate")),
    ("multiprocessing/", ("wait", "poll", "recv", "get")),
    # The SQLite write gate (db/session.py): its self time is the wait for the lock.
    ("labgate/db/session.py", ("make_engine.<locals>._on_begin",)),
    # The connection watcher reads `conntrack -E` output: its self time is a blocking read.
    ("labgate/workers/connections.py", ("ConnectionWatcher._run",)),
)
_DB_LEAF = ("do_execute", "do_executemany", "do_commit", "do_rollback", "do_begin", "connect", "fetchall",
            "fetchone", "fetchmany", "_fetchall_impl", "_fetchone_impl", "_fetchmany_impl")
_KERNEL_FILES = ("labgate/dataplane/nft.py", "labgate/dataplane/nfnetlink.py", "labgate/dataplane/ctnetlink.py",
                 "labgate/dataplane/nftsets.py", "labgate/dataplane/conntrack.py", "labgate/dataplane/netns.py",
                 "subprocess.py")


def _split_frame(frame: str) -> tuple[str, str]:
    """'Class.func (path/file.py)' -> ('Class.func', 'path/file.py')."""
    name, sep, rest = frame.rpartition(" (")
    return (name, rest[:-1]) if sep and rest.endswith(")") else (frame, "")


def _waiting(func: str, path: str) -> bool:
    for file, names in _WAIT_LEAVES:
        if (f"/{file}" in f"/{path}" if file.endswith("/") else path == file or path.endswith("/" + file)) and \
                any(func == name or func.endswith("." + name) for name in names):
            return True
    return False


def _group(frames: list[str]) -> str:
    """The group of one stack (outermost frame first)."""
    func, path = _split_frame(frames[-1]) if frames else ("", "")
    if _waiting(func, path):
        return WAITING
    if "sqlalchemy/engine/" in path and func.rpartition(".")[2] in _DB_LEAF or path.startswith("sqlite3/"):
        return DATABASE
    for frame in reversed(frames):
        func, path = _split_frame(frame)
        if any(path.endswith(k) or path.startswith(k) for k in _KERNEL_FILES):
            return KERNEL
        for group, prefixes in PROFILE_GROUPS:
            if any(p in path if p.endswith("/") else path.endswith(p) for p in prefixes):
                return group
    return "other (stdlib, interpreter)"


def summarise_profile(raw: str, *, top: int = 15, seconds: float | None = None, rate: int | None = None) -> dict:
    """Summarise py-spy's collapsed stacks (`thread (tid): name;frame;...;frame count` a line).

    Busy samples are those whose innermost frame is not a known blocking call (_WAIT_LEAVES); the tops are over
    busy samples. self = the function is the innermost frame; inclusive = it is anywhere on the stack (once a stack)."""
    per_thread: dict[str, list[int]] = {}           # name -> [samples, busy samples]
    groups: dict[str, int] = {}
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    wait_counts: dict[str, int] = {}
    total = busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).partition(": ")[2] or "?"
            thread = thread.rstrip("0123456789-_ ") or thread  # pool threads: one line for all of them
        group = _group(frames)
        stats = per_thread.setdefault(thread, [0, 0])
        stats[0] += count
        total += count
        groups[group] = groups.get(group, 0) + count
        if group == WAITING:
            # What blocks: the innermost frame below the wait (its caller), for the top of what threads wait in.
            caller = frames[-2] if len(frames) >= 2 else frames[-1] if frames else "?"
            wait_counts[caller] = wait_counts.get(caller, 0) + count
            continue
        stats[1] += count
        busy += count
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count

    def pct(value: int, of: int) -> float:
        return round(100.0 * value / of, 1) if of else 0.0

    def ranked(counts: dict[str, int], of: int) -> list[dict]:
        return [{"function": k, "samples": v, "percent": pct(v, of)}
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total, "busy_samples": busy, "seconds": seconds, "rate_hz": rate,
        "threads": {k: {"samples": v[0], "busy_percent": pct(v[1], v[0])}
                    for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1][1])},
        "groups": [{"group": g, "samples": c, "percent_all": pct(c, total),
                    "percent_busy": None if g == WAITING else pct(c, busy)}
                   for g, c in sorted(groups.items(), key=lambda kv: -kv[1])],
        "top_self": ranked(self_counts, busy),
        "top_inclusive": ranked(incl_counts, busy),
        "top_waiting_in": ranked(wait_counts, total)[:8],
    }
