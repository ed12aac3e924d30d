"""Settings: one TOML file (optional) plus LABGATE_* environment overrides, validated once at start."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

GATEWAY_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# "qrouter-<uuid>" is 44 characters; leave room but refuse anything a path or shell could misread.
NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def parse_port_range(text: str) -> tuple[int, int]:
    """'4000-4100' or '4000' -> (4000, 4100); raises ValueError with a readable reason."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", text)
    if not m:
        raise ValueError(f"port range {text!r} is not of the form 'LOW-HIGH'")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
    return low, high


class GatewayConfig(BaseModel):
    """One place where forwards live: a network namespace and its external address."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    netns: str = ""
    # "auto": the first global IPv4 address of the namespace's default-route interface, read at start.
    external_address: str = "auto"
    port_range: list[str] = Field(default_factory=lambda: ["4000-4999"])
    target_networks: list[str] = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    masquerade: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not GATEWAY_NAME_RE.fullmatch(v):
            raise ValueError("gateway name must match [a-z][a-z0-9_-]{0,30}")
        return v

    @field_validator("netns")
    @classmethod
    def _netns(cls, v: str) -> str:
        if v and not NETNS_RE.fullmatch(v):
            raise ValueError("netns must be empty (host namespace) or a plain namespace name")
        return v

    @field_validator("external_address")
    @classmethod
    def _external(cls, v: str) -> str:
        if v == "auto":
            return v
        addr = ipaddress.ip_address(v)
        if addr.version != 4:
            raise ValueError("only IPv4 external addresses are supported so far")
        return str(addr)

    @field_validator("port_range", mode="before")
    @classmethod
    def _ranges_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("port_range")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one port range is needed")
        parsed = sorted(parse_port_range(r) for r in v)
        for (_, high), (low, _) in zip(parsed, parsed[1:]):
            if low <= high:
                raise ValueError("port ranges overlap")
        return [f"{lo}-{hi}" for lo, hi in parsed]

    @field_validator("target_networks")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one target network is needed")
        nets = [ipaddress.ip_network(n, strict=False) for n in v]
        if any(n.version != 4 for n in nets):
            raise ValueError("only IPv4 target networks are supported so far")
        return [str(n) for n in nets]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [parse_port_range(r) for r in self.port_range]

    @property
    def networks(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(n) for n in self.target_networks]

    @property
    def table_name(self) -> str:
        """The nftables table labgate owns for this gateway (identifier-safe by construction)."""
        return "labgate_" + self.name.replace("-", "_")


class ServerConfig(BaseSettings):
    """The [server] section; every key can be overridden by LABGATE_<KEY> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LABGATE_", extra="forbid")

    listen: str = "127.0.0.1:3000"
    database: str = "sqlite:///var/labgate.db"
    reconcile_interval: float = Field(default=30.0, gt=0)
    # Every this many seconds the whole table is rendered again even if the cheap check saw no drift.
    full_resync_interval: float = Field(default=600.0, gt=0)
    # Which dataplane applies rules: "nft" (the kernel) or "none" (API only, e.g. `serve --no-agent`).
    dataplane: str = "nft"
    log_level: str = "info"

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

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


class Settings(BaseModel):
    """The whole configuration of one labgate process."""

    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    gateway: list[GatewayConfig] = Field(default_factory=lambda: [GatewayConfig()])

    @model_validator(mode="after")
    def _unique(self) -> "Settings":
        if not self.gateway:
            raise ValueError("at least one [[gateway]] is needed")
        seen: set[str] = set()
        for gw in self.gateway:
            if gw.table_name in seen:
                raise ValueError(f"gateway name {gw.name!r} is used twice (or differs only by '-' vs '_')")
            seen.add(gw.table_name)
        return self

    def get_gateway(self, name: str) -> GatewayConfig | None:
        return next((g for g in self.gateway if g.name == name), None)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the TOML file at `path` (or $LABGATE_CONFIG; none = the embedded defaults)."""
    path = path or os.environ.get("LABGATE_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    try:
        server = ServerConfig(**data.pop("server", {}))
        return Settings(server=server, **data)
    except ValueError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: {exc}") from None
