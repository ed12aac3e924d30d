"""`labgate token`: API tokens, written straight to the server's database (run on the server)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Optional

import typer

from labgate.cli.server import ConfigOpt, database

token_app = typer.Typer(no_args_is_help=True, help="API tokens (run on the server: they are written to its database).")

ROLE_HELP = ("admin: everything, everyone's forwards, tokens, audit; user: their own forwards; readonly: read only; "
             "metrics: GET /metrics only (per-forward series included)")


def _fail(message: str, hint: str, code: int) -> typer.Exit:
    """One error line and one hint line on stderr, like every other command; the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    typer.echo(f"hint: {hint}", err=True)
    return typer.Exit(code)


CREATE_HINT = "roles: admin, user, readonly, metrics; --expires 30d, 12h, 8w or 2026-12-31; --allow-from 192.0.2.0/24"


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}Z" if value is not None else "-"


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Argument(help="who the token belongs to; their forwards are recorded under it")],
    admin: Annotated[bool, typer.Option("--admin", help="may see and change everyone's forwards (= --role admin)")]
    = False,
    role: Annotated[Optional[str], typer.Option("--role", help=ROLE_HELP)] = None,
    expires: Annotated[Optional[str], typer.Option(
        "--expires", help="30d, 12h, 8w, a date (valid through that day, UTC: 2026-12-31) or an RFC 3339 time")]
    = None,
    allow_from: Annotated[Optional[list[str]], typer.Option(
        "--allow-from", help="CIDR the token may be used from (repeat for several); default: anywhere")] = None,
    project: Annotated[Optional[str], typer.Option(
        "--project", help="OpenStack: scope the token to this project id (its routers' forwards only)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a token and print it once, alone on stdout (only its hash is stored)."""
    from labgate.config import database_display
    from labgate.core.errors import LabgateError
    from labgate.core.tokens import ADMIN, USER, issue_token, parse_expiry

    if admin and role is not None and role != ADMIN:
        raise _fail(f"--admin contradicts --role {role}", "give one of them (--admin is --role admin)", 2)
    try:
        expires_at = parse_expiry(expires) if expires else None
        db = database(config)
        secret, info = issue_token(db, owner, role=role or (ADMIN if admin else USER), expires_at=expires_at,
                                   allowed_networks=allow_from or None, project=project)
    except LabgateError as exc:
        raise _fail(exc.message, CREATE_HINT, 2) from None
    typer.echo(secret)
    # On stderr, so `TOKEN=$(labgate token create alice)` still captures only the token.
    limits = "".join([f", expires {_when(info.expires_at)}" if info.expires_at else "",
                      f", only from {', '.join(info.allowed_networks)}" if info.allowed_networks else "",
                      f", project {info.project_id}" if info.project_id else ""])
    typer.echo(f"token {info.id} for {owner} (role {info.role}{limits}) stored in {database_display(db.url)}; "
               "it is shown only this once", err=True)


@token_app.command("ls")
def token_ls(config: ConfigOpt = None) -> None:
    """List tokens (never their secrets): id, owner, role, status, expiry, last use, allowed networks, creator."""
    from labgate.core.tokens import page_tokens

    _, tokens = page_tokens(database(config), limit=None)
    # The header goes to stderr: stdout stays one tab-separated line per token for scripts.
    typer.echo("id\towner\trole\tstatus\tcreated\texpires\tlast_used\tallowed_from\tcreated_by", err=True)
    for t in tokens:
        typer.echo(f"{t.id}\t{t.owner}\t{t.role}\t{t.status}\t{_when(t.created_at)}\t{_when(t.expires_at)}\t"
                   f"{_when(t.last_used_at)}\t{','.join(t.allowed_networks) if t.allowed_networks else 'any'}\t"
                   f"{t.created_by or '-'}")


@token_app.command("revoke")
def token_revoke(token_id: int, config: ConfigOpt = None) -> None:
    """Revoke a token by id (see `labgate token ls`)."""
    from labgate.core.errors import LabgateError
    from labgate.core.tokens import revoke_token

    try:
        info = revoke_token(database(config), token_id)
    except LabgateError as exc:
        raise _fail(exc.message, "`labgate token ls` lists the ids", 3) from None
    typer.echo(f"token {info.id} of {info.owner} revoked", err=True)
