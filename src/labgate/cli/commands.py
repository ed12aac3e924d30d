"""Client commands: login and contexts, forwards, machines, gateways. They talk to the API only."""

from __future__ import annotations

import functools
import getpass
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape

from labgate.cli import context as ctxmod
from labgate.cli.output import Col, Format, console, emit_json, err_console, fail, retry_note, table
from labgate.client import Client, Forward, LabgateError, ValidationFailed

ContextOpt = Annotated[Optional[str], typer.Option("--context", help="named context from the client config")]
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table for people, json for scripts")]

forward_app = typer.Typer(no_args_is_help=True, help="Create, list, change and remove forwards.")
machine_app = typer.Typer(no_args_is_help=True, help="Machines: the IPAM view derived from forwards.")
gateway_app = typer.Typer(no_args_is_help=True, help="Gateways and their free ports.")
context_app = typer.Typer(no_args_is_help=True, help="Named client contexts (server URL, token, defaults).")
ddns_app = typer.Typer(no_args_is_help=True, help="Dynamic DNS: the gateways' and machines' names.")
openstack_app = typer.Typer(no_args_is_help=True, help="OpenStack: project routers as gateways (docs/openstack.md).")


def handled(fn: Callable) -> Callable:
    """Turn LabgateError into one line + hint and a meaningful exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LabgateError as exc:
            raise fail(exc) from None

    return wrapper


def client_for(context: str | None) -> tuple[Client, ctxmod.Context]:
    ctx = ctxmod.resolve(context)
    return Client(ctx.url, ctx.token, on_retry=retry_note), ctx


# On a narrow terminal the columns with a `drop` rank go first (highest first), then long cells are cut.
FORWARD_COLUMNS = (Col("id", cut=False), Col("name"), Col("kind", drop=4), Col("proto", cut=False),
                   Col("external", cut=False), Col("target", cut=False), Col("status", drop=3), Col("health", drop=5),
                   Col("used", drop=8), Col("owner", drop=6), Col("description", drop=7))


def forward_row(f: Forward) -> tuple:
    target = f"{f.target_address}:{f.target_port}" if f.port_count == 1 else \
        f"{f.target_address}:{f.target_port}-{f.target_port + f.port_count - 1}"
    usage = f.usage or {}
    last = str(usage.get("last_used_at") or "")[:16].replace("T", " ")
    used = f"{usage.get('connections', 0)} conn" + (f", last {last}" if last else "")
    return (f.id, f.name, f.kind, f.protocol, f.external, target, f.status, (f.health or {}).get("state"), used,
            f.owner, f.description)


def show_forward(fwd: Forward, output: Format) -> None:
    """One forward: a one-row table, or a JSON object (not a list) for scripts."""
    if output == Format.json:
        emit_json(fwd)
    else:
        table(FORWARD_COLUMNS, [forward_row(fwd)])


def _fields(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """(field, value) rows of `forward show`: nested dicts become dotted fields, lists one row per item."""
    if isinstance(value, dict):
        rows = [row for k, v in value.items() for row in _fields(f"{prefix}.{k}", v)]
        return rows or [(prefix, "")]
    if isinstance(value, (list, tuple)):
        return [(prefix if i == 0 else "", item) for i, item in enumerate(value)] or [(prefix, "")]
    return [(prefix, value)]


def show_forwards(forwards: list[Forward], output: Format) -> None:
    if output == Format.json:
        emit_json(forwards)
    elif not forwards:
        console.print("no forwards")
    else:
        table(FORWARD_COLUMNS, [forward_row(f) for f in forwards])


# --- login and contexts ------------------------------------------------------------------------------------------
def login(
    url: Annotated[str, typer.Option("--url", help="the labgate API, e.g. http://gw.example.net:3000")],
    token: Annotated[Optional[str], typer.Option(
        "--token", help="API token; '-' reads it from stdin; omitted: asked for without echo")] = None,
    context: Annotated[str, typer.Option("--context", help="name of the context to write")] = "default",
    gateway: Annotated[Optional[str], typer.Option(help="default gateway for this context")] = None,
    host: Annotated[Optional[str], typer.Option(help="what `connect` dials (e.g. the gateway's DNS name)")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check the URL and token now")] = True,
) -> None:
    """Save a server URL and token as a named context (file mode 0600) and make it current."""
    url = ctxmod.normalize_url(url, "--url")  # before asking for the token: a bad URL is refused at once
    if token == "-":
        token = sys.stdin.readline().strip()
    elif token is None:
        token = getpass.getpass("token: ").strip() if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not token:
        raise fail(ValidationFailed("no token given", hint="create one on the server: `labgate token create NAME`"))
    if verify:
        try:
            with Client(url, token, on_retry=retry_note) as c:
                c.list_gateways()
        except LabgateError as exc:
            raise fail(exc) from None
    data = ctxmod.load()
    data.setdefault("contexts", {})[context] = {"url": url.rstrip("/"), "token": token, "gateway": gateway,
                                                "host": host}
    data["current"] = context
    path = ctxmod.save(data)
    console.print(f"logged in: context [bold]{escape(context)}[/] -> {escape(url)} (saved in {escape(str(path))})",
                  highlight=False)


@context_app.command("ls")
@handled
def context_ls(output: OutputOpt = Format.table) -> None:
    """List contexts (tokens are never shown)."""
    data = ctxmod.load()
    rows = [{"name": n, "current": n == data.get("current"), "url": c.get("url"), "gateway": c.get("gateway"),
             "host": c.get("host")} for n, c in sorted(data.get("contexts", {}).items())]
    if output == Format.json:
        emit_json(rows)
    else:
        table((Col("", cut=False), Col("name"), Col("url"), Col("gateway", drop=2), Col("host", drop=1)),
              [("*" if r["current"] else "", r["name"], r["url"], r["gateway"], r["host"]) for r in rows])


@context_app.command("use")
@handled
def context_use(name: str) -> None:
    """Make NAME the current context."""
    data = ctxmod.load()
    if name not in data.get("contexts", {}):
        raise ctxmod.ConfigError(f"no context named {name!r}", hint="see `labgate context ls`")
    data["current"] = name
    ctxmod.save(data)
    console.print(f"current context: {escape(name)}", highlight=False)


# --- forwards ------------------------------------------------------------------------------------------------------
@forward_app.command("add")
@handled
def forward_add(
    target_address: Annotated[str, typer.Argument(
        help="the machine's address, e.g. 10.9.0.5; with OpenStack also port:<port id> or server:<name or id>")],
    target_port: Annotated[int, typer.Argument(help="the machine's port, e.g. 22")],
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="machine name")] = None,
    kind: Annotated[Optional[str], typer.Option(help="machine kind, e.g. centos, windows, onefs")] = None,
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="tcp or udp")] = "tcp",
    gateway: Annotated[Optional[str], typer.Option(help="gateway (default: the context's, or the only one)")] = None,
    external_port: Annotated[Optional[int], typer.Option(help="ask for this external port (default: lowest free)")] = None,
    port_count: Annotated[int, typer.Option(help="forward a block of consecutive ports")] = 1,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", help="allowed source CIDR (repeatable)")] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="create it switched off")] = False,
    context: ContextOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Forward a free external port of the gateway to TARGET_ADDRESS:TARGET_PORT."""
    target: dict[str, Any] = {}
    if target_address.startswith("port:"):
        target_address, target["target_port_id"] = None, target_address[5:]  # type: ignore[assignment]
    elif target_address.startswith("server:"):
        target_address, target["target_server"] = None, target_address[7:]  # type: ignore[assignment]
    client, ctx = client_for(context)
    with client:
        fwd = client.create_forward(target_address, target_port, **target, name=name, kind=kind, protocol=protocol,
                                    gateway=gateway or ctx.gateway, external_port=external_port,
                                    port_count=port_count, allowed_sources=allow or None,
                                    description=description, enabled=not disabled)
    show_forward(fwd, output)


@forward_app.command("ls")
@handled
def forward_ls(
    name: Annotated[Optional[str], typer.Option("--name", "-n")] = None,
    kind: Annotated[Optional[str], typer.Option()] = None,
    target_address: Annotated[Optional[str], typer.Option("--target")] = None,
    target_port: Annotated[Optional[int], typer.Option("--target-port")] = None,
    external_port: Annotated[Optional[int], typer.Option("--external-port")] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", "-p")] = None,
    gateway: Annotated[Optional[str], typer.Option()] = None,
    owner: Annotated[Optional[str], typer.Option(help="admins: someone else's forwards")] = None,
    context: ContextOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """List your forwards (admins: everyone's), with filters."""
    client, _ = client_for(context)
    with client:
        forwards = client.list_forwards(name=name, kind=kind, target_address=target_address,
                                        target_port=target_port, external_port=external_port,
                                        protocol=protocol, gateway=gateway, owner=owner)
    show_forwards(forwards, output)


@forward_app.command("show")
@handled
def forward_show(forward_id: int, context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """Show one forward."""
    client, _ = client_for(context)
    with client:
        fwd = client.get_forward(forward_id)
    if output == Format.json:
        emit_json(fwd)
    else:
        table((Col("field", cut=False), Col("value")), [row for k, v in vars(fwd).items() for row in _fields(k, v)])


@forward_app.command("rm")
@handled
def forward_rm(forward_ids: Annotated[list[int], typer.Argument(help="one or more forward ids")],
               context: ContextOpt = None) -> None:
    """Remove forwards (open sessions through them are cut)."""
    client, _ = client_for(context)
    with client:
        for fid in forward_ids:
            client.delete_forward(fid)
            console.print(f"removed forward {fid}")


@forward_app.command("enable")
@handled
def forward_enable(forward_id: int, context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """Switch a forward on."""
    client, _ = client_for(context)
    with client:
        show_forward(client.enable_forward(forward_id), output)


@forward_app.command("disable")
@handled
def forward_disable(forward_id: int, context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """Switch a forward off, keeping its port (open sessions are cut)."""
    client, _ = client_for(context)
    with client:
        show_forward(client.disable_forward(forward_id), output)


@forward_app.command("edit")
@handled
def forward_edit(
    forward_id: int,
    target_address: Annotated[Optional[str], typer.Option("--target", help="new target address")] = None,
    target_port: Annotated[Optional[int], typer.Option("--target-port")] = None,
    description: Annotated[Optional[str], typer.Option("--description", "-d")] = None,
    name: Annotated[Optional[str], typer.Option("--name", "-n")] = None,
    kind: Annotated[Optional[str], typer.Option()] = None,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", help="replace allowed sources (repeatable)")] = None,
    allow_any: Annotated[bool, typer.Option("--allow-any", help="remove the source restriction")] = False,
    context: ContextOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Change a forward; retargeting is one atomic change on the gateway."""
    changes: dict[str, Any] = {k: v for k, v in dict(target_address=target_address, target_port=target_port,
                                                      description=description, name=name, kind=kind).items()
                               if v is not None}
    if allow and allow_any:
        raise fail(ValidationFailed("--allow and --allow-any exclude each other"))
    if allow:
        changes["allowed_sources"] = allow
    if allow_any:
        changes["allowed_sources"] = []
    if not changes:
        raise fail(ValidationFailed("nothing to change", hint="see `labgate forward edit --help`"))
    client, _ = client_for(context)
    with client:
        show_forward(client.update_forward(forward_id, **changes), output)


APPLY_HINT = "the file is a YAML list of forwards, each with name, target_address and target_port"
APPLY_KEYS = {"name", "target_address", "target_port", "protocol", "kind", "gateway", "description",
              "allowed_sources", "enabled", "port_count", "external_port"}


def read_apply_file(path: Path) -> list[dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(sys.stdin.read() if str(path) == "-" else path.read_text())
    except FileNotFoundError:
        raise ValidationFailed(f"{path} does not exist", hint=APPLY_HINT) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ValidationFailed(f"{path} is not valid YAML: {problem}{where}", hint=APPLY_HINT) from None
    items = data.get("forwards") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValidationFailed(f"{path} must hold a list of forwards (or a 'forwards:' list)", hint=APPLY_HINT)
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ValidationFailed(f"entry {i} of {path} is not a mapping", hint=APPLY_HINT)
        unknown = set(item) - APPLY_KEYS
        missing = {"name", "target_address", "target_port"} - set(item)
        if unknown or missing:
            raise ValidationFailed(f"entry {i} of {path}: " + "; ".join(
                ([f"unknown keys {sorted(unknown)}"] if unknown else []) +
                ([f"missing {sorted(missing)}"] if missing else [])), hint=APPLY_HINT)
    return items


@forward_app.command("apply")
@handled
def forward_apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="YAML list of forwards ('-' = stdin)")],
    context: ContextOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Make sure every forward in FILE exists (by machine name, target port and protocol): create the missing,
    retarget the moved, leave the rest. One request, all or nothing; safe to run again."""
    items = read_apply_file(file)
    client, ctx = client_for(context)
    if ctx.gateway:
        items = [{"gateway": ctx.gateway, **item} for item in items]
    try:
        with client, console.status(f"applying {len(items)} forward(s)", spinner="dots") \
                if output != Format.json else nullcontext():
            outcome = client.apply_forwards(items)
    except LabgateError as exc:
        # The server names the item ("forwards[3].target_address: ..."): say which entry of the file it is.
        m = re.match(r"forwards\[(\d+)\]", exc.field or "")
        if m and int(m.group(1)) < len(items):
            i = int(m.group(1))
            item = items[i]
            exc.message = (f"entry {i + 1} of {file} ({item.get('name')} {item.get('target_address')}:"
                           f"{item.get('target_port')}): " + re.sub(r"^forwards\[\d+\]: ", "", exc.message) +
                           " (nothing was applied)")
            exc.args = (exc.message,)
        raise
    show_forwards(outcome["forwards"], output)
    if output != Format.json:
        err_console.print(f"{outcome['created']} created, {outcome['updated']} changed, {outcome['unchanged']} "
                          f"unchanged" + (" (pending: the gateway's agent has not applied it yet)"
                                          if outcome["status"] == "pending" else ""), highlight=False)


# --- machines and gateways -----------------------------------------------------------------------------------------
@machine_app.command("ls")
@handled
def machine_ls(
    name: Annotated[Optional[str], typer.Option("--name", "-n")] = None,
    kind: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[str], typer.Option(help="up, down (bad records) or unknown")] = None,
    context: ContextOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """List machines with their addresses and forwards."""
    client, _ = client_for(context)
    with client:
        machines = client.list_machines(name=name, kind=kind, status=status)
    if output == Format.json:
        emit_json(machines)
        return
    table((Col("name"), Col("kind", drop=2), Col("owner", drop=3), Col("status", drop=1), Col("addresses"),
           Col("forwards")),
          [(m.name, m.kind, m.owner, m.status, ", ".join(m.addresses),
            ", ".join(f"{f.protocol}/{f.target_port}->{f.external}" for f in m.forwards)) for m in machines])


@gateway_app.command("ls")
@handled
def gateway_ls(context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """List gateways, their ranges, free ports and status."""
    client, _ = client_for(context)
    with client:
        gateways = client.list_gateways()
    if output == Format.json:
        emit_json(gateways)
        return
    routers = any(g.router_id for g in gateways)
    agents = any(g.agent for g in gateways)  # a cluster: the agent that programs each gateway, and how far it is
    table((Col("name"), *((Col("router", drop=4),) if routers else ()), Col("external", cut=False),
           Col("ranges", drop=2), Col("free tcp/udp", drop=3), Col("forwards", drop=1),
           *((Col("agent", drop=5), Col("applied", drop=5)) if agents else ()), Col("status"), Col("last error")),
          [(g.name, *((g.router_name or g.router_id or "",) if routers else ()), g.external_address,
            ", ".join(g.port_ranges), f"{g.ports_free.get('tcp')}/{g.ports_free.get('udp')}", g.forwards,
            *((_agent_cell(g.agent), f"{g.applied_generation}/{g.generation}") if agents else ()), g.status,
            g.last_error)
           for g in gateways])
    # What keeps a gateway from working, and the fix: in full, below the table (a cell would cut it).
    for g in gateways:
        for problem in g.problems:
            typer.echo(f"{g.name}: {problem.get('message')}")
            if problem.get("fix"):
                typer.echo(f"  fix: {problem['fix']}")


@gateway_app.command("agents")
@handled
def gateway_agents(context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """The agents that program the gateways' kernels (a cluster), their heartbeats, and which API process runs the
    cluster-wide work (admins)."""
    client, _ = client_for(context)
    with client:
        status = client.cluster_status()
    if output == Format.json:
        emit_json(status)
        return
    console.print(f"database {escape(str(status['database']))}  cluster-wide work on: "
                  f"{escape(str(status.get('leader') or 'nobody (no API process holds the lock)'))}", highlight=False)
    table((Col("agent"), Col("host", drop=2), Col("pid", drop=4), Col("gateways", drop=1), Col("heartbeat"),
           Col("version", drop=3), Col("state")),
          [(a["name"], a["host"], a["pid"], ", ".join(a["gateways"]) or "-", a["heartbeat_at"], a.get("version"),
            "alive" if a["alive"] else ("stopped" if a.get("stopped_at") else "no heartbeat"))
           for a in status["agents"]])


def _agent_cell(agent: dict | None) -> str:
    if not agent:
        return ""
    return f"{agent.get('name')}@{agent.get('host')}" + ("" if agent.get("alive") else " (down)")


# --- dynamic DNS ---------------------------------------------------------------------------------------------------
def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@ddns_app.command("status")
@handled
def ddns_status(context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """Where DNS updates go, what each name points at, and the last update or error."""
    client, _ = client_for(context)
    with client:
        status = client.ddns_status()
    if output == Format.json:
        emit_json(status)
        return
    if not status.get("configured"):
        console.print("dynamic DNS is not configured on this server ([ddns] in its labgate.toml)", highlight=False)
        return
    console.print(f"server {escape(str(status['server']))}  zone {escape(str(status['zone']))}  key "
                  f"{escape(str(status['key_name']))} ({escape(str(status['key_algorithm']))})", highlight=False)
    table((Col("gateway"), Col("name"), Col("source", drop=3), Col("address", cut=False), Col("published", drop=2),
           Col("last update", drop=4), Col("failures", drop=1), Col("last error")),
          [(g["gateway"], g["name"], g["source"], g["address"], g["address_published"], _when(g["last_update_at"]),
            g["failures"] or "", g["last_error"]) for g in status.get("gateways", [])])
    m = status.get("machines")
    if m:
        table((Col("machine zone"), Col("names"), Col("published"), Col("pending", drop=2), Col("skipped", drop=4),
               Col("last update", drop=3), Col("failures", drop=1), Col("last error")),
              [(m["zone"], m["names"], m["published"], m["pending"], ", ".join(m["skipped"]) or "",
                _when(m["last_update_at"]), m["failures"] or "", m["last_error"])])


# --- OpenStack -------------------------------------------------------------------------------------------------------
@openstack_app.command("status")
@handled
def openstack_status(context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """The OpenStack monitor's last cycle: when, how long, API calls, changes applied, error."""
    client, _ = client_for(context)
    with client:
        status = client.openstack_status()
    if output == Format.json:
        emit_json(status)
        return
    if not status.get("configured"):
        console.print("OpenStack is not configured on this server ([openstack] in its labgate.toml)", highlight=False)
        return
    console.print(f"cloud {escape(str(status['cloud']))}  every {status['monitor_interval']:g} s  on target deleted: "
                  f"{escape(str(status['on_target_deleted']))}  failures in a row: {status['consecutive_failures']}",
                  highlight=False)
    rows = [(what, c.get("started_at"), c.get("seconds"), c.get("api_calls"), c.get("routers"), c.get("ports"),
             ", ".join(f"{k} {v}" for k, v in sorted((c.get("changes") or {}).items())) or "-", c.get("error"))
            for what, c in (("last", status.get("last_cycle")), ("last ok", status.get("last_successful_cycle")))
            if c]
    table((Col("cycle"), Col("started"), Col("seconds", drop=3), Col("api calls", drop=2), Col("routers", drop=4),
           Col("ports", drop=5), Col("changes", drop=1), Col("error")), rows)
