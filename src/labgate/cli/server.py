"""What the server-side commands share: the --config option, and loading settings and the database from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from labgate.config import ConfigError, Settings, load_settings

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (default: $LABGATE_CONFIG, else built-in defaults)")]


def settings(config: Path | None) -> Settings:
    """The settings, or exit 2 with the configuration error."""
    from labgate.db.session import in_memory

    try:
        loaded = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if in_memory(loaded.server.database):
        typer.echo(f"error: database {loaded.server.database} is in memory: every labgate process would have an "
                   "empty one of its own (`labgate serve` could never see the tokens `labgate token create` makes, "
                   "and would lose every forward when it stops)", err=True)
        typer.echo("hint: use a SQLite file, e.g. LABGATE_DATABASE=sqlite:///labgate.db (a relative path is taken "
                   "inside data_dir), or a PostgreSQL URL", err=True)
        raise typer.Exit(2)
    return loaded


def database(config: Path | None):
    """The configured database, migrated to the current schema."""
    from labgate.db.migrate import upgrade
    from labgate.db.session import Database

    db = Database(settings(config).server.database)
    upgrade(db.engine)
    return db


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only ever means this machine: every address it resolves to is a
    loopback one. "", 0.0.0.0 and :: (every address) are not."""
    import ipaddress
    import socket

    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def plain_http_refusal(server_cfg, host: str) -> str | None:
    """The message refusing plain HTTP on `host`, or None when it is fine (TLS, loopback, or told to)."""
    if server_cfg.tls_cert_file or server_cfg.insecure_http or is_loopback(host):
        return None
    return (f"error: refusing to serve plain HTTP on {server_cfg.listen} (not a loopback address): API tokens "
            "would cross the network in clear text\n"
            "hint: give [server] tls_cert_file and tls_key_file to serve HTTPS; or listen on 127.0.0.1 behind a "
            "TLS reverse proxy; or, on a network you trust, pass --insecure (or set [server] insecure_http = true)")


def private_data_dir(server_cfg) -> None:
    """Make labgate's data directory accessible to its owner only when it holds the SQLite database (token
    hashes, every forward); a missing one is created 0700 with the database (db/session.py)."""
    import logging
    import os

    from sqlalchemy.engine import make_url

    url = make_url(server_cfg.database)
    if url.get_backend_name() != "sqlite" or not url.database:
        return
    path = server_cfg.data_dir
    if os.path.dirname(os.path.abspath(url.database)) != os.path.abspath(path):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)
        logging.getLogger("labgate").info("event=data_dir_private path=%s mode=%o", path, st.st_mode & 0o700)
