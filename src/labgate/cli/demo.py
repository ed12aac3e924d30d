"""`labgate demo`: a throwaway lab in network namespaces, labgate serving it, and a connection shown going through.

Everything it builds is named with one prefix (default "lgdemo"): three namespaces (client, gateway, lab), the
services inside the lab, and a SQLite file under /tmp/labgate-<prefix>. `labgate demo --down` removes all of it.

Stopping: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop the demo the same way - labgate's server is shut down
cleanly (so its workers stop their own children, like `conntrack -E`), then the lab's services are stopped; the
namespaces (and the forwarding table in the gateway's) stay until `labgate demo --down`. The demo leaves no
process behind. With --no-wait the demo ends after the show and the lab, services included, stays up.

labgate is served as `labgate serve` serves it (labgate.api.http.make_server: the connection bound, header and body
deadlines, no X-Forwarded-* trusted) with the default limits, and spoken to through the SDK (labgate.client: a 429
is waited out, an error is one line and a hint). Its settings are its own: LABGATE_* variables meant for a real
server (LABGATE_DATABASE, LABGATE_RATE_LIMIT, ...) do not reach it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from labgate import lab as lablib
from labgate.cli.output import Col, fail, retry_note, table
from labgate.client import Client, Forward, LabgateError

console = Console()

DEFAULT_PREFIX = "lgdemo"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY = "Press Ctrl-C (or send SIGTERM) to stop serving."  # the last line printed before the demo blocks


def state_dir(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"labgate-{prefix}"


def down(prefix: str) -> None:
    removed = lablib.destroy_labs(prefix)
    shutil.rmtree(state_dir(prefix), ignore_errors=True)
    console.print(f"removed {len(removed)} namespace(s)" + (f": {', '.join(removed)}" if removed else "")
                  + f" and {state_dir(prefix)}")


# --- what the demo suggests trying: each line must work as printed ----------------------------------------------------
def labgate_command() -> list[str]:
    """How to run this same labgate again from a shell: `labgate` when that is what runs on PATH, else the script
    that runs now, else `<this python> -m labgate`."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) == "labgate" and os.path.exists(argv0):
        on_path = shutil.which("labgate")
        if on_path and os.path.samefile(on_path, argv0):
            return ["labgate"]
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "labgate"]


def down_command(prefix: str) -> str:
    return shlex.join([*labgate_command(), "demo", "--down", *(["--prefix", prefix] if prefix != DEFAULT_PREFIX
                                                               else [])])


def _program(name: str, fallback: str) -> str:
    """`name` when the shell finds it on PATH, else where it usually is."""
    return name if shutil.which(name) else fallback


def tcp_probe_command(client_ns: str, address: str, port: int) -> str:
    """A shell command that connects from the client namespace through the gateway, sends 'hello' and prints the
    answer: only `ip` (which the demo needs anyway) and this very Python interpreter, nothing to install."""
    code = (f'import socket; s = socket.create_connection(("{address}", {int(port)}), timeout=3); '
            's.sendall(b"hello\\n"); print(s.recv(200).decode().strip())')
    return shlex.join([_program("ip", lablib._ip_binary()), "netns", "exec", client_ns, sys.executable, "-c", code])


def suggestions(lab: lablib.Lab, table_name: str, url: str, token: str, ssh: Forward, serving: bool) -> list[str]:
    """Commands for the reader to try, as printed (tests run every one of them)."""
    lines = [tcp_probe_command(lab.client_ns, ssh.external_address or lab.external_address, ssh.external_port),
             shlex.join([_program("ip", lablib._ip_binary()), "netns", "exec", lab.gateway_ns,
                         _program("nft", "/usr/sbin/nft"), "list", "table", "ip", table_name])]
    if serving:
        lines.insert(0, f"LABGATE_URL={shlex.quote(url)} LABGATE_TOKEN={shlex.quote(token)} "
                        + shlex.join([*labgate_command(), "forward", "ls"]))
        if shutil.which("curl"):
            lines.append(shlex.join(["curl", "-sS", "-H", f"Authorization: Bearer {token}",
                                     f"{url}/api/v1/forwards"]))
    return lines


def demo_server_config(**values: object):
    """The demo server's [server] settings: `values` and the defaults, never the environment (ServerConfig lets
    LABGATE_* win over what it is given: LABGATE_DATABASE would point the demo at a real server's database)."""
    from labgate.config import ServerConfig

    class DemoServerConfig(ServerConfig):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):  # noqa: ANN001
            return (init_settings,)

    return DemoServerConfig(**values)


# --- stopping on a signal -------------------------------------------------------------------------------------------
class Stopped(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived (a BaseException, like KeyboardInterrupt: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Guard:
    def __init__(self) -> None:
        self.armed = True
        self.fired: list[int] = []

    def disarm(self) -> None:
        self.armed = False


@contextmanager
def stop_on_signals() -> Iterator[_Guard]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise Stopped in the main thread - once, and only until
    guard.disarm(): after that they are ignored, so that the cleanup runs to its end. The previous handlers are
    restored on the way out."""
    guard = _Guard()

    def handler(signum: int, _frame) -> None:  # noqa: ANN001
        guard.fired.append(signum)
        if guard.armed:
            guard.armed = False
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield guard
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def say(message: str) -> None:
    """Print, ignoring a terminal that went away (SIGHUP: the cleanup must go on)."""
    try:
        console.print(message, highlight=False, soft_wrap=True)
    except (OSError, ValueError):
        pass


def child_pids() -> list[int]:
    """The live processes whose parent is this process (from /proc)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if fields[0] != "Z" and int(fields[1]) == me:
            found.append(int(entry))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- the demo --------------------------------------------------------------------------------------------------------
class Demo:
    """The demo's parts, so that whatever point a signal interrupts, everything started so far can be stopped."""

    def __init__(self, prefix: str, port: int) -> None:
        self.prefix, self.port = prefix, port
        self.url = f"http://127.0.0.1:{port}"
        self.lab: lablib.Lab | None = None
        self.services: list[lablib.Service] = []
        self.lg = None
        self.server = None
        self.thread: threading.Thread | None = None
        self.token = ""
        self.table_name = ""

    def build(self) -> None:
        from labgate.api.app import create_app
        from labgate.api.http import make_server
        from labgate.config import GatewayConfig, Settings
        from labgate.core.tokens import create_token
        from labgate.service import Labgate

        with console.status("building the lab: client, gateway and lab namespaces") as status:
            self.lab = lab = lablib.create_lab(self.prefix)
            m1, m2 = lab.machine_addresses[:2]
            status.update("starting services on the lab machines")
            for address, p, proto in ((m1, 22, "tcp"), (m2, 22, "tcp"), (m2, 80, "tcp"), (m1, 53, "udp")):
                start = lablib.Service.start_tcp_echo if proto == "tcp" else lablib.Service.start_udp_echo
                self.services.append(start(lab.lab_ns, address, p, exit_with_parent=False))

            state = state_dir(self.prefix)
            state.mkdir(parents=True, exist_ok=True)
            gateway = GatewayConfig(name="demo", netns=lab.gateway_ns, external_address=lab.external_address,
                                    port_range=["4000-4099"], target_networks=[lab.lab_network])
            self.table_name = gateway.table_name
            settings = Settings(
                server=demo_server_config(listen=f"127.0.0.1:{self.port}",
                                          database=f"sqlite:///{state}/labgate.db"),
                gateway=[gateway],
            )
            status.update("starting labgate")
            self.lg = Labgate(settings)
            # The server `labgate serve` runs, with its defences (and the default limits).
            self.server = make_server(create_app(self.lg), settings.server, host="127.0.0.1", port=self.port,
                                      log_level="warning")
            self.thread = threading.Thread(target=self.server.run, name="labgate-demo-server", daemon=True)
            self.thread.start()
            deadline = time.monotonic() + 30
            while not self.server.started:
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    console.print(f"[red]error:[/] labgate did not start on port {self.port} (is it in use? try "
                                  "--port)")
                    raise typer.Exit(1)
                time.sleep(0.05)
            self.token = create_token(self.lg.db, "demo")

    def show(self) -> Forward:
        """Forward into the lab through the API and show each connection's answer; returns the ssh forward."""
        lab = self.lab
        assert lab is not None
        m1, m2 = lab.machine_addresses[:2]
        say(f"[bold]lab[/]: client {lab.client_address} -> gateway {lab.external_address} "
            f"(namespace {lab.gateway_ns}) -> machines {m1}, {m2} in {lab.lab_network}")
        say(f"[bold]labgate[/] at {self.url}, token for user 'demo': {escape(self.token)}\n")
        rows = []
        with Client(self.url, self.token, timeout=10, on_retry=retry_note) as c:
            before = lablib.tcp_request(lab.client_ns, lab.external_address, 4000, "hello", timeout=1)
            rows.append(("(none yet)", f"tcp {lab.external_address}:4000", "-", repr(before)))
            plan = [
                dict(name="centos1", kind="centos", target_address=m1, target_port=22),
                dict(name="web1", kind="centos", target_address=m2, target_port=80),
                dict(name="centos1", kind="centos", target_address=m1, target_port=53, protocol="udp"),
            ]
            created = [c.create_forward(**body) for body in plan]
            for f in created:
                ask = lablib.tcp_request if f.protocol == "tcp" else lablib.udp_request
                answer = ask(lab.client_ns, lab.external_address, f.external_port, "hello")
                rows.append((f"#{f.id} {f.name} {f.protocol}/{f.target_port}",
                             f"{f.protocol} {f.external_address}:{f.external_port}",
                             f"{f.target_address}:{f.target_port}", repr(answer)))
            ssh = c.update_forward(created[0].id, target_address=m2)
            answer = lablib.tcp_request(lab.client_ns, lab.external_address, ssh.external_port, "hello")
            rows.append((f"#{ssh.id} retargeted", f"tcp {lab.external_address}:{ssh.external_port}",
                         f"{m2}:22", repr(answer)))
            web = created[1]
            c.delete_forward(web.id)
            answer = lablib.tcp_request(lab.client_ns, lab.external_address, web.external_port, "hello",
                                        timeout=1)
            rows.append((f"#{web.id} deleted", f"tcp {lab.external_address}:{web.external_port}", "-",
                         repr(answer)))
        table((Col("forward"), Col("request", cut=False), Col("reaches", cut=False), Col("answer")), rows, out=console)
        say("\nEach answer is '<machine that answered>:<payload>'; None means no connection.")
        return ssh

    def suggest(self, ssh: Forward, serving: bool) -> None:
        assert self.lab is not None
        say("\nTry it yourself, as root, in another shell:" if serving else "\nTry it yourself, as root:")
        for line in suggestions(self.lab, self.table_name, self.url, self.token, ssh, serving):
            say(f"  {escape(line)}")

    def serve(self) -> None:
        """Block until a signal (Stopped) or until the server stops by itself."""
        assert self.thread is not None
        say(f"\nlabgate serves {self.url} until you stop it; the lab stays afterwards.")
        say(f"`{escape(down_command(self.prefix))}` removes the lab.")
        say(READY)  # the last line before blocking
        while self.thread.is_alive():
            self.thread.join(0.5)
        say("[red]error:[/] labgate stopped serving by itself (see the messages above)")
        raise typer.Exit(1)

    def shutdown(self, keep_services: bool) -> None:
        """Stop the server cleanly (its workers stop their children: `conntrack -E`), then the lab's services
        unless they are to outlive the command, then, as a last resort, any child process still running."""
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            if not self.thread.is_alive() and self.lg is not None and self.lg.started:
                self.lg.stop()  # a server stopped before it finished starting does not run its shutdown
        if not keep_services:
            for service in self.services:
                service.stop()
        kept = {s.process.pid for s in self.services} if keep_services else set()
        leftovers = [pid for pid in child_pids() if pid not in kept]
        if leftovers:
            say(f"stopped leftover process(es): {', '.join(_stop_pids(leftovers))}")


def _stop_pids(pids: list[int], timeout: float = 5.0) -> list[str]:
    """Terminate (then kill) these child processes and wait until they are gone; 'pid (name)' of each."""
    names = [f"{pid} ({_comm(pid)})" for pid in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    remaining = [p for p in pids if p in child_pids()]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in pids if p in child_pids()]
    for pid in remaining:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:  # reap them: no zombie left either
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return names


def run_demo(prefix: str, port: int, wait: bool) -> None:
    if os.geteuid() != 0:
        console.print("[red]error:[/] the demo builds network namespaces: run it as root")
        raise typer.Exit(1)
    demo = Demo(prefix, port)
    shown = False
    stopped: Stopped | None = None
    failed: typer.Exit | None = None
    with stop_on_signals() as guard:
        try:
            if lablib.list_labs(prefix):
                say(f"a demo lab with prefix {prefix!r} exists already: removing it first")
                down(prefix)
            demo.build()
            ssh = demo.show()
            shown = True
            demo.suggest(ssh, serving=wait)
            if wait:
                demo.serve()
            else:
                say(f"\nlabgate has stopped; the lab stays up: `{escape(down_command(prefix))}` removes it.")
        except Stopped as exc:
            stopped = exc
            say(f"\n{exc.name}: stopping labgate and the lab's services; the lab's namespaces stay "
                f"(`{escape(down_command(prefix))}` removes them)")
        except LabgateError as exc:  # the API refused a step of the show: one line and a hint, then the cleanup
            failed = fail(exc)
        finally:
            guard.disarm()  # a second signal must not cut the cleanup short
            demo.shutdown(keep_services=shown and not wait and stopped is None)
    if failed is not None:
        say(f"the lab's namespaces stay: `{escape(down_command(prefix))}` removes them")
        raise failed
    if stopped is not None and not shown:
        raise typer.Exit(128 + stopped.signum)
