"""The [server] section: where labgate listens and keeps its database, and how often its loops run. Every key
can be overridden from the environment (LABGATE_<KEY>)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# An agent's name (`labgate agent --name`, [server] agent_name): what its heartbeat row is keyed by.
AGENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ServerConfig(BaseSettings):
    """The [server] section; every key can be overridden by LABGATE_<KEY> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LABGATE_", extra="forbid")

    listen: str = "127.0.0.1:3000"
    # A relative SQLite path is taken inside data_dir, wherever labgate is started from: `labgate serve` and
    # `labgate token create` run from two directories use the same file.
    database: str = "sqlite:///labgate.db"
    data_dir: str = Field(default_factory=lambda: default_data_dir())
    # Serve HTTPS with this certificate (PEM, chain included) and key; both or neither. Re-read on SIGHUP.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Plain HTTP on an address other than loopback is refused unless this is set (or `serve --insecure`).
    insecure_http: bool = False
    # The server's own defences (see README, "Hardening").
    # Seconds a client has to send a request's headers (from connecting, or from the end of the previous answer).
    header_timeout: float = Field(default=10.0, gt=0)
    # Seconds a request body has to arrive; also how long an answer may wait for a client that does not read.
    body_timeout: float = Field(default=30.0, gt=0)
    # Open client connections at most; beyond it a new connection gets 503 and is closed. 0 = from the descriptor
    # limit: the limit minus fd_reserve, at most 1024 (at least half the limit when the limit is small).
    max_connections: int = Field(default=0, ge=0)
    # Descriptors kept free for the database, the dataplane (netlink sockets, conntrack, probes) and the sinks.
    fd_reserve: int = Field(default=256, ge=16)
    # The largest request body accepted (bytes); larger ones get 413 without being read.
    max_body_bytes: int = Field(default=262144, ge=1024)
    # The bodies of POST /api/v1/forwards/batch and /apply (thousands of forwards in one request).
    max_batch_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Per API token: requests per second (sustained) and burst; beyond them 429 with Retry-After. 0 = no limit.
    rate_limit: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=1000, ge=1)
    # Per client address (the TCP peer): after this many failed logins (a bearer token or vLab JWT refused with
    # 401) within failed_login_window seconds, the address's requests that carry a token get 429 with Retry-After,
    # unchecked, until the window ends. 0 = no limit.
    failed_login_limit: int = Field(default=20, ge=0)
    failed_login_window: float = Field(default=60.0, gt=0)
    reconcile_interval: float = Field(default=30.0, gt=0)
    # Every this many seconds the whole table is rendered again even if the cheap check saw no drift.
    full_resync_interval: float = Field(default=600.0, gt=0)
    # How often kernel usage counters are read into the database, and targets are probed.
    usage_interval: float = Field(default=60.0, gt=0)
    health_interval: float = Field(default=60.0, gt=0)
    # Which dataplane applies rules: "nft" (the kernel) or "none" (API only, e.g. `serve --no-agent`).
    dataplane: str = "nft"
    # API replicas (`serve --no-agent`): how long a change waits for its gateway's agent to apply it before the
    # answer is 202 (status "pending"). Agents: how often they heartbeat and look for changes when no NOTIFY comes
    # (PostgreSQL NOTIFY wakes them at once; on SQLite they only poll).
    agent_wait: float = Field(default=5.0, ge=0, le=300)
    agent_interval: float = Field(default=5.0, gt=0, le=300)
    agent_poll_interval: float = Field(default=2.0, gt=0, le=300)
    # The name this process's agent heartbeats under (default: the host name); unique in a cluster.
    agent_name: str | None = Field(default=None, min_length=1, max_length=128, pattern=AGENT_NAME.pattern)
    log_level: str = "info"
    # How log lines are written to stderr: "text" (time level=... logger=... event=... key=value) or "json" (one
    # object per line: time, level, logger, message and the message's key=value pairs as fields).
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: an operator overrides one key without editing it.
        return env_settings, init_settings

    @field_validator("dataplane")
    @classmethod
    def _dataplane(cls, v: str) -> str:
        if v not in ("nft", "none"):
            raise ValueError("dataplane must be 'nft' or 'none'")
        return v

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.is_absolute():
            raise ValueError(f"data_dir {v!r} must be an absolute path")
        return str(path)

    @model_validator(mode="after")
    def _resolve(self) -> "ServerConfig":
        self.database = resolve_database_url(self.database, Path(self.data_dir))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both (HTTPS) or neither (HTTP)")
        for key in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{key} {path!r} cannot be read")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def default_data_dir() -> str:
    """Where labgate keeps its state unless told otherwise: /var/lib/labgate for root, else the user's data dir."""
    if os.geteuid() == 0:
        return "/var/lib/labgate"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "labgate")


def resolve_database_url(url: str, data_dir: Path) -> str:
    """`url` with a relative SQLite file path made absolute inside `data_dir` (other URLs unchanged)."""
    # SQLAlchemy is imported here, not at the top: the CLI reads this module and must start fast.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"database {url!r} is not a database URL (e.g. sqlite:///labgate.db or "
                         "postgresql+psycopg://user@host/labgate)") from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database).expanduser()
    if path.is_absolute():
        return url
    return parsed.set(database=str(data_dir / path)).render_as_string(hide_password=False)


def database_display(url: str) -> str:
    """The database URL as it may be shown to a person: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
