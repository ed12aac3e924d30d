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
