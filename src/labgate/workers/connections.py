"""Every new forwarded connection becomes a "connection" event, read from the kernel inside the gateway namespace.

Source: conntrack NEW events (`conntrack -E -e NEW`), run in the gateway's namespace. Connections labgate forwards
carry the forward's id as their connection mark (set by the forwarding table), so the event names its forward; the
forward's owner and machine name come from the database (cached). The program's output is line-buffered through
`stdbuf`; when it exits (the namespace was re-created, conntrack was restarted) it is started again with backoff.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from typing import Callable

from labgate.dataplane import netns
from labgate.dataplane.conntrack import Connection, parse_connection
from labgate.events import Event, Publisher

log = logging.getLogger("labgate.connections")

def parse_event(line: str) -> Connection | None:
    """Parse a NEW line of `conntrack -E -o timestamp,extended,id`; None for anything else, another protocol, or
    a connection without a mark (not one of labgate's forwards)."""
    return parse_connection(line) if "[NEW]" in line else None


ForwardLookup = Callable[[int], "dict | None"]
# Called with a message while the watcher cannot run (shown as a gateway problem), and with None once it runs.
ProblemReport = Callable[["str | None"], None]


class ConnectionWatcher:
    """Publishes a connection event for each new connection through a forward of one gateway."""

    def __init__(self, gateway: str, netns_name: str, bus: Publisher, lookup: ForwardLookup,
                 report: ProblemReport | None = None) -> None:
        self.gateway = gateway
        self.netns = netns_name
        self.bus = bus
        self.lookup = lookup
        self.report = report or (lambda _message: None)
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.seen = 0
        self.last_error: str | None = None
        self.ready = threading.Event()  # set once conntrack has had a moment to subscribe

    def _command(self) -> list[str]:
        conntrack = shutil.which("conntrack") or "/usr/sbin/conntrack"
        argv = [conntrack, "-E", "-e", "NEW", "-o", "timestamp,extended,id"]
        stdbuf = shutil.which("stdbuf")
        return [stdbuf, "-oL"] + argv if stdbuf else argv

    def handle(self, line: str) -> Event | None:
        """Turn one conntrack line into a published event (None when it is not one of our forwards)."""
        ct = parse_event(line)
        if ct is None:
            return None
        fwd = self.lookup(ct.mark)
        if fwd is None or fwd.get("gateway") != self.gateway:
            return None
        self.seen += 1
        return self.bus.publish(Event.new(
            "connection", gateway=self.gateway, forward_id=ct.mark, owner=fwd.get("owner"), name=fwd.get("name"),
            protocol=ct.protocol, src_ip=ct.src, src_port=ct.sport, external_port=ct.dport,
            target_ip=ct.reply_src, target_port=ct.reply_sport))

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            log.error("event=connection_watch_failed gateway=%s error=%r", self.gateway, message)
        self.last_error = message
        self.report(f"connection events are not collected: {message}")

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                # This thread, and the conntrack child it starts, live in the gateway namespace; entered again
                # on every start, since the namespace may have been re-created. Its identity is read first: if it
                # changes in between, conntrack is restarted once more rather than left in a stale namespace.
                inode = netns.netns_inode(self.netns)
                netns.enter(self.netns)
                self._proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, bufsize=1)
            except (OSError, netns.NamespaceError) as exc:
                self._fail(str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, 30)
                continue
            started = time.monotonic()
            threading.Timer(0.3, self._running).start()
            threading.Thread(target=self._follow_namespace, args=(self._proc, inode),
                             name=f"conntrack-ns-{self.gateway}", daemon=True).start()
            assert self._proc.stdout is not None and self._proc.stderr is not None
            for line in self._proc.stdout:
                try:
                    self.handle(line)
                except Exception:  # noqa: BLE001 - one odd line must not stop the watcher
                    log.exception("event=connection_line_failed gateway=%s", self.gateway)
            error = self._proc.stderr.read().strip().splitlines()
            code = self._proc.wait()
            if self._stop.is_set():
                break
            self._fail(f"conntrack -E exited with status {code}" + (f": {error[-1]}" if error else ""))
            if time.monotonic() - started > 30:
                delay = 1.0
            self._stop.wait(delay)
            delay = min(delay * 2, 30)

    def _follow_namespace(self, proc: subprocess.Popen, inode: int | None) -> None:
        """conntrack -E never exits when its namespace is deleted (it keeps the old one alive): end it when the
        name now means another namespace (or none), so that the loop starts it again in the new one."""
        while proc.poll() is None and not self._stop.wait(1.0):
            if netns.netns_inode(self.netns) != inode:
                log.warning("event=connection_watch_namespace_changed gateway=%s", self.gateway)
                proc.terminate()
                return

    def _running(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None and not self._stop.is_set():
            self.last_error = None
            self.report(None)
            self.ready.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"conntrack-{self.gateway}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout)
