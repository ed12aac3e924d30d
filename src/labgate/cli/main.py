"""`labgate`: serve the API, manage tokens and the database, run a demo lab."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from labgate.config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=True, help="Self-service port forwarding gateway.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (run on the server: they are written to its database).")
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")


def _register_client_commands() -> None:
    from labgate.cli import commands
    from labgate.cli.connect import connect

    app.command("login")(commands.handled(commands.login))
    app.command("connect")(connect)
    app.add_typer(commands.forward_app, name="forward")
    app.add_typer(commands.machine_app, name="machine")
    app.add_typer(commands.gateway_app, name="gateway")
    app.add_typer(commands.context_app, name="context")
    app.add_typer(commands.ddns_app, name="ddns")


_register_client_commands()

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (default: $LABGATE_CONFIG, else built-in defaults)")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _database(config: Path | None):
    from labgate.db.migrate import upgrade
    from labgate.db.session import Database

    settings = _settings(config)
    db = Database(settings.server.database)
    upgrade(db.engine)
    return db


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: Annotated[Optional[str], typer.Option(help="host:port to listen on (overrides the config)")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="API only: do not touch the kernel")] = False,
) -> None:
    """Run the API and the dataplane (one process)."""
    import uvicorn

    from labgate.api.app import create_app
    from labgate.core.service import Labgate
    from labgate.logs import setup_logging

    settings = _settings(config)
    if listen:
        settings.server.listen = listen
    if no_agent:
        settings.server.dataplane = "none"
    setup_logging(settings.server.log_level)
    host, port = settings.server.host_port
    lg = Labgate(settings)
    uvicorn.run(create_app(lg), host=host, port=port, log_level=settings.server.log_level, access_log=False)


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Argument(help="who the token belongs to; their forwards are recorded under it")],
    admin: Annotated[bool, typer.Option("--admin", help="may see and change everyone's forwards")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a token and print it once, alone on stdout (only its hash is stored)."""
    from labgate.core.errors import LabgateError
    from labgate.core.tokens import create_token

    try:
        secret = create_token(_database(config), owner, admin=admin)
    except LabgateError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)


@token_app.command("ls")
def token_ls(config: ConfigOpt = None) -> None:
    """List tokens (never their secrets)."""
    from labgate.core.tokens import list_tokens

    for t in list_tokens(_database(config)):
        typer.echo(f"{t['id']}\t{t['owner']}\t{'admin' if t['admin'] else 'user'}\t"
                   f"{'revoked' if t['revoked'] else 'active'}\t{t['created_at']:%Y-%m-%d %H:%M}")


@token_app.command("revoke")
def token_revoke(token_id: int, config: ConfigOpt = None) -> None:
    """Revoke a token by id (see `labgate token ls`)."""
    from labgate.core.errors import LabgateError
    from labgate.core.tokens import revoke_token

    try:
        revoke_token(_database(config), token_id)
    except LabgateError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(3) from None


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
