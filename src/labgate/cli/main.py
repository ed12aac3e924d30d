"""`labgate`: serve the API, manage tokens and the database, run a demo lab."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from labgate.cli import server

app = typer.Typer(no_args_is_help=True, add_completion=True, help="Self-service port forwarding gateway.")
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
app.add_typer(db_app, name="db")


def _register_client_commands() -> None:
    from labgate.cli import commands
    from labgate.cli.connect import connect
    from labgate.cli.tokens import token_app

    app.add_typer(token_app, name="token")

    app.command("login")(commands.handled(commands.login))
    app.command("connect")(connect)
    app.add_typer(commands.forward_app, name="forward")
    app.add_typer(commands.machine_app, name="machine")
    app.add_typer(commands.gateway_app, name="gateway")
    app.add_typer(commands.context_app, name="context")
    app.add_typer(commands.ddns_app, name="ddns")
    app.add_typer(commands.openstack_app, name="openstack")


_register_client_commands()

ConfigOpt = server.ConfigOpt
_settings = server.settings
_database = server.database


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: Annotated[Optional[str], typer.Option(help="host:port to listen on (overrides the config)")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="API only: do not touch the kernel")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow plain HTTP on an address other than "
                                           "loopback (tokens then cross the network in clear)")] = False,
) -> None:
    """Run the API and the dataplane (one process). SIGHUP re-reads the TLS certificate and key."""
    import signal
    import ssl

    from labgate.api.app import create_app
    from labgate.api.http import make_server, raise_descriptor_limit, tls_files
    from labgate.service import Labgate
    from labgate.logs import setup_logging

    settings = _settings(config)
    if listen:
        settings.server.listen = listen
    if no_agent:
        settings.server.dataplane = "none"
    if insecure:
        settings.server.insecure_http = True
    setup_logging(settings.server.log_level)
    try:
        host, port = settings.server.host_port
    except ValueError:
        typer.echo(f"error: listen {settings.server.listen!r} is not host:port", err=True)
        raise typer.Exit(2) from None
    refusal = server.plain_http_refusal(settings.server, host)
    if refusal:
        typer.echo(refusal, err=True)
        raise typer.Exit(2)
    # Before anything touches the kernel: a second `labgate serve` on a busy port must fail without re-syncing
    # the live table of the one already running.
    problem = _listen_problem(host, port)
    if problem:
        typer.echo(f"error: cannot listen on {host}:{port}: {problem}", err=True)
        typer.echo("hint: another labgate (or other server) may already run there; stop it or use --listen",
                   err=True)
        raise typer.Exit(6)
    try:
        tls = tls_files(settings.server)
    except (OSError, ssl.SSLError) as exc:
        typer.echo(f"error: cannot load tls_cert_file {settings.server.tls_cert_file!r} and tls_key_file "
                   f"{settings.server.tls_key_file!r}: {exc}", err=True)
        typer.echo("hint: a PEM certificate (chain included) and its unencrypted PEM private key", err=True)
        raise typer.Exit(2) from None
    # As many descriptors as allowed (systemd's default soft limit is 1,024): the connection bound is derived
    # from what we get, and the rest is kept for the database and the dataplane.
    raise_descriptor_limit()
    server.private_data_dir(settings.server)
    lg = Labgate(settings)
    _first_token_hint(lg, config)
    http = make_server(create_app(lg), settings.server, host=host, port=port, log_level=settings.server.log_level,
                       tls=tls)
    if http.config.tls is not None:
        signal.signal(signal.SIGHUP, lambda _sig, _frame: http.reload_tls())
    try:
        http.run()
    except KeyboardInterrupt:  # a second Ctrl-C; uvicorn already shut down what it could
        pass
    if not http.started:
        raise typer.Exit(6)


def _listen_problem(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on now, or None. Bound the way uvicorn binds (SO_REUSEADDR)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _first_token_hint(lg, config: Path | None) -> None:
    """With no token in the database yet nobody can use the API: say how to make the first one."""
    from labgate.config import database_display
    from labgate.core.tokens import list_tokens
    from labgate.db.migrate import upgrade

    upgrade(lg.db.engine)
    if any(not t["revoked"] for t in list_tokens(lg.db)):
        return
    where = f" --config {config}" if config else ""
    typer.echo(f"labgate: no API token yet in {database_display(lg.db.url)}. Create the first one (shown once) with:\n"
               f"  labgate token create admin --admin{where}\n"
               f"then: labgate login --url {lg.settings.server.scheme}://{lg.settings.server.listen}", err=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply the schema migrations (serve also does this at start)."""
    from labgate.db.migrate import current_revision

    db = _database(config)
    typer.echo(f"database at revision {current_revision(db.engine)}")


@app.command()
def demo(
    down: Annotated[bool, typer.Option("--down", help="remove the demo lab and everything it made")] = False,
    prefix: Annotated[str, typer.Option(help="name prefix of the demo's namespaces (1-11 characters)")] = "lgdemo",
    port: Annotated[int, typer.Option(help="port the demo's API listens on (127.0.0.1)")] = 3080,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="keep serving after the show until Ctrl-C")] = True,
) -> None:
    """Build a throwaway lab in network namespaces (as root), forward into it through the API, show it working."""
    from labgate.cli import demo as demo_mod

    if down:
        demo_mod.down(prefix)
    else:
        demo_mod.run_demo(prefix, port, wait)


@app.command("config")
def show_config(config: ConfigOpt = None) -> None:
    """Print the effective configuration as JSON."""
    typer.echo(json.dumps(_settings(config).model_dump(), indent=2))


def main() -> None:  # pragma: no cover
    sys.exit(app())
