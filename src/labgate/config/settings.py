"""The whole configuration of one labgate process: one TOML file (optional) plus LABGATE_* environment overrides,
validated once at start, and the checks that span sections."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import dns.name
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labgate.config.compat import CompatConfig
from labgate.config.ddns import DdnsConfig
from labgate.config.gateway import GatewayConfig
from labgate.config.limits import LimitsConfig
from labgate.config.openstack import OpenStackConfig
from labgate.config.server import ServerConfig
from labgate.config.sinks import SinkConfig, sink_names


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


class Settings(BaseModel):
    """The whole configuration of one labgate process."""

    # A mistaken inline secret must not be echoed back in the error message.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    server: ServerConfig = Field(default_factory=ServerConfig)
    gateway: list[GatewayConfig] = Field(default_factory=lambda: [GatewayConfig()])
    compat: CompatConfig = Field(default_factory=CompatConfig)
    # [[sink]] tables: where events (connections, health changes) are delivered.
    sink: list[SinkConfig] = Field(default_factory=list)
    # [ddns]: keep gateways' (and optionally machines') names right in DNS; absent = off.
    ddns: DdnsConfig | None = None
    # [limits]: per-owner quotas on forwards and ports.
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # [openstack]: project routers as gateways, followed by a monitor (docs/openstack.md); absent = off.
    openstack: OpenStackConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> "Settings":
        if not self.gateway and self.openstack is None:
            raise ValueError("at least one [[gateway]] is needed (or an [openstack] section)")
        seen: set[str] = set()
        for gw in self.gateway:
            if gw.router_id is not None or gw.router_name is not None or gw.project_id is not None:
                raise ValueError(f"gateway {gw.name!r}: router_id, router_name and project_id are set by the "
                                 "OpenStack monitor, not in [[gateway]]")
            if gw.table_name in seen:
                raise ValueError(f"gateway name {gw.name!r} is used twice (or differs only by '-' vs '_')")
            seen.add(gw.table_name)
        return self

    @model_validator(mode="after")
    def _sink_names(self) -> "Settings":
        sink_names(self.sink)  # raises on duplicate names
        return self

    @model_validator(mode="after")
    def _compat_gateway(self) -> "Settings":
        if self.compat.vlab_enabled and not self.gateway:
            raise ValueError("the vLab compatibility API needs a [[gateway]] to act on")
        if self.compat.vlab_enabled and self.compat.gateway is None and len(self.gateway) != 1:
            raise ValueError("compat.gateway must name the gateway the vLab API acts on (there are several)")
        if self.compat.gateway is not None and self.get_gateway(self.compat.gateway) is None:
            raise ValueError(f"compat.gateway {self.compat.gateway!r} is not one of the [[gateway]] names")
        return self

    @model_validator(mode="after")
    def _ddns(self) -> "Settings":
        named = [g for g in self.gateway if g.dns_name]
        for gw in self.gateway:
            if gw.ddns_interface and not gw.dns_name:
                raise ValueError(f"gateway {gw.name!r} has ddns_interface but no dns_name to publish")
        if self.ddns is None:
            if named:
                raise ValueError(f"gateway {named[0].name!r} has a dns_name but there is no [ddns] section "
                                 "(server, zone, key_file)")
            return self
        if not named and not self.ddns.machine_zone:
            raise ValueError("[ddns] has nothing to publish: give a gateway a dns_name, or set ddns.machine_zone")
        zone = dns.name.from_text(self.ddns.zone)
        seen: dict[str, str] = {}
        for gw in named:
            assert gw.dns_name
            if not dns.name.from_text(gw.dns_name).is_subdomain(zone):
                raise ValueError(f"gateway {gw.name!r}: dns_name {gw.dns_name!r} is not inside ddns.zone "
                                 f"{self.ddns.zone!r}")
            if gw.dns_name in seen:
                raise ValueError(f"gateways {seen[gw.dns_name]!r} and {gw.name!r} have the same dns_name")
            seen[gw.dns_name] = gw.name
        return self

    @property
    def compat_gateway(self) -> GatewayConfig:
        """The gateway the vLab compatibility API acts on."""
        if self.compat.gateway is not None:
            found = self.get_gateway(self.compat.gateway)
            assert found is not None
            return found
        return self.gateway[0]

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
    if "openstack" in data and "gateway" not in data:
        data["gateway"] = []  # with OpenStack, the routers are the gateways: no implicit host-namespace one
    try:
        server = ServerConfig(**data.pop("server", {}))
        return Settings(server=server, **data)
    except ValueError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: {exc}") from None
