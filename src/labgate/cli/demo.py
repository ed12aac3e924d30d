"""`labgate demo`: a throwaway lab in network namespaces, labgate serving it, and a connection shown going through.

Everything it builds is named with one prefix (default "lgdemo"): three namespaces (client, gateway, lab), the
services inside the lab, and a SQLite file under /tmp/labgate-<prefix>. `labgate demo --down` removes all of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from labgate import lab as lablib

console = Console()


def state_dir(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"labgate-{prefix}"


def down(prefix: str) -> None:
    removed = lablib.destroy_labs(prefix)
    shutil.rmtree(state_dir(prefix), ignore_errors=True)
    console.print(f"removed {len(removed)} namespace(s)" + (f": {', '.join(removed)}" if removed else "")
                  + f" and {state_dir(prefix)}")


def run_demo(prefix: str, port: int, wait: bool) -> None:
    import uvicorn

    from labgate.api.app import create_app
    from labgate.config import GatewayConfig, ServerConfig, Settings
    from labgate.core.service import Labgate
    from labgate.core.tokens import create_token

    if os.geteuid() != 0:
        console.print("[red]error:[/] the demo builds network namespaces: run it as root")
        raise typer.Exit(1)
    if lablib.list_labs(prefix):
        console.print(f"a demo lab with prefix {prefix!r} exists already: removing it first")
        down(prefix)

    with console.status("building the lab: client, gateway and lab namespaces") as status:
        lab = lablib.create_lab(prefix)
        m1, m2 = lab.machine_addresses[:2]
        status.update("starting services on the lab machines")
        for address, p, proto in ((m1, 22, "tcp"), (m2, 22, "tcp"), (m2, 80, "tcp"), (m1, 53, "udp")):
            start = lablib.Service.start_tcp_echo if proto == "tcp" else lablib.Service.start_udp_echo
            start(lab.lab_ns, address, p, exit_with_parent=False)

        state = state_dir(prefix)
        state.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            server=ServerConfig(listen=f"127.0.0.1:{port}", database=f"sqlite:///{state}/labgate.db"),
            gateway=[GatewayConfig(name="demo", netns=lab.gateway_ns, external_address=lab.external_address,
                                   port_range=["4000-4099"], target_networks=[lab.lab_network])],
        )
        status.update("starting labgate")
        lg = Labgate(settings)
        server = uvicorn.Server(uvicorn.Config(create_app(lg), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                console.print(f"[red]error:[/] labgate did not start on port {port} (is it in use? try --port)")
                raise typer.Exit(1)
            time.sleep(0.05)
        token = create_token(lg.db, "demo")

    url = f"http://127.0.0.1:{port}"
    console.print(f"[bold]lab[/]: client {lab.client_address} -> gateway {lab.external_address} "
                  f"(namespace {lab.gateway_ns}) -> machines {m1}, {m2} in {lab.lab_network}")
    console.print(f"[bold]labgate[/] at {url}, token for user 'demo': {token}\n")

    results = Table("forward", "request", "through the gateway", "answer")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            before = lablib.tcp_request(lab.client_ns, lab.external_address, 4000, "hello", timeout=1)
            results.add_row("(none yet)", f"tcp {lab.external_address}:4000", "-", repr(before))
            plan = [
                dict(name="centos1", kind="centos", target_address=m1, target_port=22),
                dict(name="web1", kind="centos", target_address=m2, target_port=80),
                dict(name="centos1", kind="centos", target_address=m1, target_port=53, protocol="udp"),
            ]
            created = []
            for body in plan:
                r = c.post("/api/v1/forwards", json=body)
                r.raise_for_status()
                created.append(r.json())
            for f in created:
                ask = lablib.tcp_request if f["protocol"] == "tcp" else lablib.udp_request
                answer = ask(lab.client_ns, lab.external_address, f["external_port"], "hello")
                results.add_row(f"#{f['id']} {f['name']} {f['protocol']}/{f['target_port']}",
                                f"{f['protocol']} {f['external_address']}:{f['external_port']}",
                                f"{f['target_address']}:{f['target_port']}", repr(answer))
            ssh = created[0]
            r = c.patch(f"/api/v1/forwards/{ssh['id']}", json={"target_address": m2})
            r.raise_for_status()
            answer = lablib.tcp_request(lab.client_ns, lab.external_address, ssh["external_port"], "hello")
            results.add_row(f"#{ssh['id']} retargeted", f"tcp {lab.external_address}:{ssh['external_port']}",
                            f"{m2}:22", repr(answer))
            c.delete(f"/api/v1/forwards/{created[1]['id']}").raise_for_status()
            answer = lablib.tcp_request(lab.client_ns, lab.external_address, created[1]["external_port"], "hello",
                                        timeout=1)
            results.add_row(f"#{created[1]['id']} deleted", f"tcp {lab.external_address}:{created[1]['external_port']}",
                            "-", repr(answer))
        console.print(results)
        console.print("\nEach answer is '<machine that answered>:<payload>'; None means no connection.")
        console.print(f"See the kernel side: ip netns exec {lab.gateway_ns} nft list table ip labgate_demo")
        console.print(f"Connect yourself:   ip netns exec {lab.client_ns} nc {lab.external_address} "
                      f"{created[0]['external_port']}")
        if wait:
            console.print(f"\nlabgate keeps serving {url} (try: curl -H 'Authorization: Bearer {token}' "
                          f"{url}/api/v1/forwards). Ctrl-C stops it; `labgate demo --down` removes the lab.")
            try:
                while thread.is_alive():
                    thread.join(0.5)
            except KeyboardInterrupt:
                pass
        else:
            console.print("`labgate demo --down` removes the lab.")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
