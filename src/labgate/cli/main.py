"""`labgate`: serve the API, manage tokens and the database, run a demo lab."""

from __future__ import annotations

import json
import sys
from enum import Enum
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


def _register_install_commands() -> None:
    from labgate.cli.install import install, uninstall  # `labgate install`: the system user, config and units

    app.command("install")(install)
    app.command("uninstall")(uninstall)


_register_install_commands()

ConfigOpt = server.ConfigOpt
_settings = server.settings
_database = server.database


class LogFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: Annotated[Optional[str], typer.Option(help="host:port to listen on (overrides the config)")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="API only: do not touch the kernel")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow plain HTTP on an address other than "
                                           "loopback (tokens then cross the network in clear)")] = False,
    log_format: Annotated[Optional[LogFormat], typer.Option(
        "--log-format", help="log lines as key=value text or as JSON objects (overrides [server] log_format)")]
    = None,
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
    if log_format is not None:
        settings.server.log_format = log_format.value
    setup_logging(settings.server.log_level, settings.server.log_format)
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
    # JSON logs: uvicorn's own records (start, stop, errors) go to our handler too, not to its text formatter.
    own_logging = {"log_config": None} if settings.server.log_format == "json" else {}
    http = make_server(create_app(lg), settings.server, host=host, port=port, log_level=settings.server.log_level,
                       tls=tls, **own_logging)
    if http.config.tls is not None:
        signal.signal(signal.SIGHUP, lambda _sig, _frame: http.reload_tls())
    try:
        http.run()
    except KeyboardInterrupt:  # a second Ctrl-C; uvicorn already shut down what it could
        pass
    if not http.started:
        raise typer.Exit(6)


@app.command()
def agent(
    config: ConfigOpt = None,
    gateway: Annotated[Optional[list[str]], typer.Option(
        "--gateway", "-g", help="serve only this [[gateway]] (repeat for more; default: every one in the config)")]
    = None,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="the name this agent heartbeats under (default: [server] agent_name, else the host name)")]
    = None,
    log_format: Annotated[Optional[LogFormat], typer.Option(
        "--log-format", help="log lines as key=value text or as JSON objects")] = None,
) -> None:
    """Run the dataplane alone, for a gateway host whose API runs elsewhere (`labgate serve --no-agent` on the same
    database, PostgreSQL): apply the changes committed for this host's gateways, heartbeat, and report each
    gateway's applied generation or error. No HTTP. SIGTERM or Ctrl-C stops it; its kernel rules stay in place."""
    import signal
    import threading

    from labgate.config.server import AGENT_NAME
    from labgate.logs import setup_logging
    from labgate.service import Labgate

    settings = _settings(config)
    if log_format is not None:
        settings.server.log_format = log_format.value
    setup_logging(settings.server.log_level, settings.server.log_format)
    if name is not None and not AGENT_NAME.fullmatch(name):
        raise _db_fail(f"agent name {name!r} is not usable", "letters, digits and _ . : - only, 1 to 128 of them", 2)
    if settings.server.dataplane == "none":
        raise _db_fail("an agent programs kernels, and this config says [server] dataplane = \"none\"",
                       "set dataplane = \"nft\" in the agent's config (API replicas use `serve --no-agent`)", 2)
    if gateway:
        known = [g.name for g in settings.gateway]
        unknown = [g for g in gateway if g not in known]
        if unknown:
            raise _db_fail(f"no [[gateway]] named {', '.join(map(repr, unknown))} in the config",
                           f"the config's gateways: {', '.join(known) or 'none'}", 2)
        settings.gateway = [g for g in settings.gateway if g.name in gateway]
    elif not settings.gateway and settings.openstack is None:
        raise _db_fail("this config has no [[gateway]] and no [openstack]: the agent would serve nothing",
                       "give it the [[gateway]] blocks of this host (the same as the API replicas')", 2)
    # An agent serves kernels only: the API's cluster-wide work (DDNS, the OpenStack monitor) runs on a replica.
    settings.ddns = None
    server.private_data_dir(settings.server)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: done.set())
    lg = Labgate(settings, agent_name=name, agent_only=True)
    try:
        lg.start()
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for a database that is not there
        lg.stop()
        reason = next(iter(str(getattr(exc, "orig", None) or exc).splitlines()), "") or type(exc).__name__
        raise _db_fail(f"the agent could not start: {reason}",
                       "is the database running and reachable, and may this user write it?", 6) from None
    assert lg.agent is not None
    typer.echo(f"labgate agent {lg.agent.name}: serving {', '.join(lg.agent.gateways) or 'no gateway'}", err=True)
    try:
        done.wait()
    finally:
        lg.stop()


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


def _db_fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    """One error line on stderr (and a hint line when there is one); the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    return typer.Exit(code)


def _sqlite_file(settings, command: str) -> str:
    """The configured SQLite database file; for any other database, exit with the one line that says what to use."""
    from sqlalchemy.engine import make_url

    from labgate.config import database_display
    from labgate.db.session import sqlite_file

    url = settings.server.database
    path = sqlite_file(url)
    if path is not None:
        return path
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # pg_dump's own URL: no SQLAlchemy driver, no password (it reads PGPASSWORD or ~/.pgpass).
        pg = parsed._replace(drivername="postgresql", password=None).render_as_string(hide_password=False)
        how = (f"back it up with pg_dump: pg_dump --format=custom --file=labgate.dump '{pg}'" if command == "backup"
               else f"restore it with pg_restore: pg_restore --clean --if-exists --dbname='{pg}' labgate.dump, "
                    "then labgate db upgrade")
        raise _db_fail(f"labgate db {command} works on SQLite files; this database is PostgreSQL: {how}", code=2)
    raise _db_fail(f"labgate db {command} works on SQLite files; {database_display(url)} is not one", code=2)


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply the schema migrations, on SQLite or PostgreSQL (serve also does this at start)."""
    from sqlalchemy.exc import SQLAlchemyError

    from labgate.config import database_display
    from labgate.db.migrate import SchemaTooNew, upgrade
    from labgate.db.session import Database

    settings = _settings(config)
    where = database_display(settings.server.database)
    try:
        db = Database(settings.server.database)
        try:
            before, after = upgrade(db.engine)
        finally:
            db.dispose()
    except SchemaTooNew as exc:
        raise _db_fail(str(exc), "run the labgate version that migrated it, or a newer one", 4) from None
    except (SQLAlchemyError, OSError) as exc:
        reason = next(iter(str(getattr(exc, "orig", None) or exc).splitlines()), "") or type(exc).__name__
        raise _db_fail(f"cannot migrate {where}: {reason}",
                       "is the database running and reachable, and may this user write it?", 6) from None
    if before == after:
        typer.echo(f"{where}: already at head ({after})")
    else:
        typer.echo(f"{where}: schema {before or '(empty)'} -> {after}")


@db_app.command("backup")
def db_backup(
    file: Annotated[Path, typer.Argument(help="where to write the copy (a new file; see --force)")],
    force: Annotated[bool, typer.Option("--force", help="replace FILE if it exists")] = False,
    config: ConfigOpt = None,
) -> None:
    """Copy the SQLite database to FILE, safely while labgate serves (SQLite's backup API), and check the copy.
    PostgreSQL: use pg_dump."""
    from labgate.db.backup import BackupError, backup

    path = _sqlite_file(_settings(config), "backup")
    try:
        copy = backup(path, file, force=force)
    except BackupError as exc:
        raise _db_fail(exc.message, exc.hint, exc.exit_code) from None
    typer.echo(f"backed up {path} to {copy.path}: {_size(copy.size)}, schema revision {copy.revision or 'none'}, "
               f"{copy.forwards} forwards, integrity ok")


@db_app.command("restore")
def db_restore(
    file: Annotated[Path, typer.Argument(help="a copy made by `labgate db backup`")],
    force: Annotated[bool, typer.Option("--force", help="replace a database that holds data (a copy of it is "
                                        "kept beside it, *.before-restore-*)")] = False,
    config: ConfigOpt = None,
) -> None:
    """Replace the SQLite database with FILE, then migrate it to this labgate's schema. Refused while a labgate
    (any process) has the database open: stop it first. PostgreSQL: use pg_restore."""
    from labgate.db.backup import BackupError, restore

    path = _sqlite_file(_settings(config), "restore")
    try:
        done = restore(file, path, force=force)
    except BackupError as exc:
        raise _db_fail(exc.message, exc.hint, exc.exit_code) from None
    kept = f"; the database it replaced is kept in {done.kept}" if done.kept else ""
    schema = f"schema {done.revision_before} -> {done.revision_after}" \
        if done.revision_before != done.revision_after else f"schema at head ({done.revision_after})"
    typer.echo(f"restored {done.source.path} ({done.source.forwards} forwards) into {path}{kept}; {schema}")


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
