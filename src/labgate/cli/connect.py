"""`labgate connect NAME --protocol P`: find (or create) the machine's forward and open the right client.

The protocol decides the target port (ssh/scp 22, rdp 3389, vnc 5900, http 80, https 443), per-kind overrides
change it (vLab's onefs https 8080, esrs 9443; more in the client config's [kinds.<kind>]). The client programs
are looked up on PATH in order of preference; `--print` prints the command or URL instead of running it.
No password is ever put on a command line: the launched client asks for it itself.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Annotated, Callable, Optional

import typer

from rich.markup import escape

from labgate.cli import context as ctxmod
from labgate.cli.commands import ContextOpt, client_for, handled
from labgate.cli.output import console, note
from labgate.client import Forward, NotFound, ValidationFailed

PROTOCOLS = ("ssh", "scp", "rdp", "vnc", "https", "http")
DEFAULT_PORTS = {"ssh": 22, "scp": 22, "rdp": 3389, "vnc": 5900, "http": 80, "https": 443}
KIND_PORTS = {"onefs": {"https": 8080}, "esrs": {"https": 9443}}
INSTALL_HINTS = {
    "ssh": "install an SSH client (apt-get install openssh-client)",
    "scp": "install FileZilla (apt-get install filezilla) or use the scp command below",
    "rdp": "install an RDP client (apt-get install freerdp2-x11, or remmina)",
    "vnc": "install a VNC viewer (apt-get install tigervnc-viewer, or remmina)",
    "http": "install a web browser, or open the URL below",
    "https": "install a web browser, or open the URL below",
}


def target_port_for(protocol: str, kind: str | None) -> int:
    """Config [kinds.<kind>] first, then the built-in vLab kinds, then the protocol's standard port."""
    configured = ctxmod.kind_ports(kind)
    if protocol in configured:
        return configured[protocol]
    return KIND_PORTS.get(kind or "", {}).get(protocol, DEFAULT_PORTS[protocol])


@dataclass
class Launch:
    """What to run for a protocol: the first candidate found, or the command to print when none is."""

    candidates: list[list[str]]
    interactive: bool = False           # runs in this terminal (ssh); else detached (GUI clients)
    url: str | None = None
    printable: list[str] | None = None  # shown with --print and when no candidate is installed
    chosen: list[str] | None = field(default=None, init=False)


def plan(protocol: str, host: str, port: int, user: str | None, platform: str = sys.platform) -> Launch:
    at = f"{user}@" if user else ""
    if protocol == "ssh":
        argv = ["ssh", "-p", str(port), f"{at}{host}"]
        return Launch([argv], interactive=True, printable=argv)
    if protocol == "scp":
        scp = ["scp", "-P", str(port), "FILE", f"{at}{host}:"]
        return Launch([["filezilla", f"sftp://{at}{host}:{port}"]], printable=scp)
    if protocol == "rdp":
        if platform == "win32":
            return Launch([["mstsc", f"/v:{host}:{port}"]], printable=["mstsc", f"/v:{host}:{port}"])
        if platform == "darwin":
            url = f"rdp://full%20address=s:{host}:{port}" + (f"&username=s:{user}" if user else "")
            return Launch([["open", url]], url=url, printable=["open", url])
        free = [f"/v:{host}:{port}"] + ([f"/u:{user}"] if user else [])
        return Launch([["xfreerdp", *free], ["wlfreerdp", *free], ["remmina", "-c", f"rdp://{at}{host}:{port}"]],
                      printable=["xfreerdp", *free])
    if protocol == "vnc":
        if platform == "darwin":
            return Launch([["open", f"vnc://{host}:{port}"]], url=f"vnc://{host}:{port}")
        return Launch([["vncviewer", f"{host}::{port}"], ["remmina", "-c", f"vnc://{host}:{port}"]],
                      printable=["vncviewer", f"{host}::{port}"])
    url = f"{protocol}://{host}:{port}/"
    if platform == "darwin":
        return Launch([["open", url]], url=url)
    return Launch([["xdg-open", url], ["sensible-browser", url], ["firefox", url], ["chromium", url]], url=url)


def choose(launch: Launch, which: Callable[[str], str | None] = shutil.which) -> Launch:
    for argv in launch.candidates:
        if which(argv[0]):
            launch.chosen = argv
            break
    return launch


def _describe(fwd: Forward) -> str:
    restricted = f", only from {', '.join(fwd.allowed_sources)}" if fwd.allowed_sources else ""
    return (f"#{fwd.id} on gateway {fwd.gateway} port {fwd.external_port} -> "
            f"{fwd.target_address}:{fwd.target_port}{restricted}")


def pick(matching: list[Forward], name: str, protocol: str, port: int, forward_id: int | None) -> Forward:
    """The forward to use among the enabled TCP forwards of machine `name` to `port`.

    `--id` chooses one of them. Otherwise one match is used as is. Several that reach the same address are the
    same machine by different routes (gateways, external ports): the unrestricted one with the lowest id is used,
    and a note on stderr says which and how to choose another. Several that reach different addresses are
    different machines under one name: refused, with the list."""
    if forward_id is not None:
        chosen = next((f for f in matching if f.id == forward_id), None)
        if chosen is None:
            ids = ", ".join(f"#{f.id}" for f in matching) or "none"
            raise NotFound(f"forward {forward_id} is not an enabled tcp forward of machine {name!r} to port {port} "
                           f"({protocol}); those are: {ids}",
                           hint=f"see them with `labgate forward ls --name {name} --target-port {port}`")
        return chosen
    if len(matching) == 1:
        return matching[0]
    ordered = sorted(matching, key=lambda f: (bool(f.allowed_sources), f.id))
    if len({f.target_address for f in matching}) > 1:
        raise ValidationFailed(
            f"{len(matching)} forwards named {name!r} go to port {port} ({protocol}) of different machines: "
            + "; ".join(_describe(f) for f in ordered),
            hint=f"choose one with --id, e.g. `labgate connect {name} --protocol {protocol} --id {ordered[0].id}`")
    chosen, others = ordered[0], ordered[1:]
    gateways = sorted({f.gateway for f in matching})
    how = "--id N" + (" or --gateway G" if len(gateways) > 1 else "")
    note(f"{len(matching)} forwards of {name!r} go to {chosen.target_address}:{port} ({protocol}): using "
         f"{_describe(chosen)}; not {'; '.join(_describe(f) for f in others)}. Choose another with {how}.")
    return chosen


def find_or_create(client, ctx, name: str, protocol: str, kind: str | None, create: bool,
                   address: str | None, gateway: str | None, forward_id: int | None = None) -> Forward:
    forwards = client.list_forwards(name=name, gateway=gateway)
    kind = kind or next((f.kind for f in forwards if f.kind), None)
    port = target_port_for(protocol, kind)
    matching = [f for f in forwards if f.target_port == port and f.protocol == "tcp" and f.enabled]
    if matching or forward_id is not None:
        return pick(matching, name, protocol, port, forward_id)
    if not create:
        if not forwards:
            raise NotFound(f"no machine named {name!r} has a forward",
                           hint=f"create one: labgate connect {name} --protocol {protocol} --create --address IP")
        raise NotFound(f"machine {name!r} has no enabled forward to port {port} ({protocol})",
                       hint=f"create it: labgate connect {name} --protocol {protocol} --create")
    addresses = sorted({f.target_address for f in forwards})
    if address is None:
        if len(addresses) != 1:
            raise ValidationFailed(f"--create needs --address: machine {name!r} has "
                                   + (f"several addresses ({', '.join(addresses)})" if addresses else "no known address"))
        address = addresses[0]
    return client.create_forward(address, port, name=name, kind=kind, gateway=gateway)


@handled
def connect(
    name: Annotated[str, typer.Argument(help="machine name")],
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="|".join(PROTOCOLS))] = "ssh",
    user: Annotated[Optional[str], typer.Option("--user", "-u", help="user name to log in as")] = None,
    print_only: Annotated[bool, typer.Option("--print", help="print the command or URL instead of running it")] = False,
    create: Annotated[bool, typer.Option("--create", help="create the forward first if it is missing")] = False,
    address: Annotated[Optional[str], typer.Option("--address", help="the machine's address, for --create")] = None,
    kind: Annotated[Optional[str], typer.Option(help="machine kind, if its forwards do not say")] = None,
    gateway: Annotated[Optional[str], typer.Option(help="gateway (default: the context's)")] = None,
    forward_id: Annotated[Optional[int], typer.Option(
        "--id", help="use this forward when several match (see `labgate forward ls --name NAME`)")] = None,
    context: ContextOpt = None,
) -> None:
    """Open a session to machine NAME through its forward: ssh, scp, rdp, vnc, http or https."""
    protocol = protocol.lower()
    if protocol not in PROTOCOLS:
        raise ValidationFailed(f"unknown protocol {protocol!r}", hint=f"use one of {', '.join(PROTOCOLS)}")
    client, ctx = client_for(context)
    with client:
        fwd = find_or_create(client, ctx, name, protocol, kind, create, address, gateway or ctx.gateway, forward_id)
    host = ctx.host or fwd.external_address
    launch = choose(plan(protocol, str(host), fwd.external_port, user))
    # What would run: the client found on this machine, else the usual command (or the URL) to try by hand.
    if protocol == "scp":
        shown = shlex.join(launch.printable or [])  # the scp line is the useful answer, whatever GUI is installed
    elif launch.chosen is not None and not launch.url:
        shown = shlex.join(launch.chosen)
    else:
        shown = launch.url or shlex.join(launch.printable or launch.candidates[0])
    if print_only:
        typer.echo(shown)
        return
    if launch.chosen is None:
        # scp's plain command is a complete answer on its own; the others need a program that is missing.
        if protocol == "scp":
            typer.echo(shlex.join(launch.printable or []))
            return
        console.print(f"[yellow]no {protocol} client found:[/] {INSTALL_HINTS[protocol]}", highlight=False)
        typer.echo(shown)
        raise typer.Exit(1)
    if launch.interactive:
        raise typer.Exit(subprocess.call(launch.chosen))
    subprocess.Popen(launch.chosen, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    console.print(f"opened {escape(shlex.join(launch.chosen))}", highlight=False)
