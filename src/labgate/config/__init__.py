"""Settings: one TOML file (optional) plus LABGATE_* environment overrides, validated once at start.

A leaf of the package graph: it imports nothing from labgate but small leaf modules (keys, inline_secrets, the
event kind rule), so every layer may read it. One module per section:

    server.py   [server]       ServerConfig, where the database lives
    gateway.py  [[gateway]]    GatewayConfig, port ranges
    compat.py   [compat]       CompatConfig (the key itself is read by labgate.keys)
    ddns.py     [ddns]         DdnsConfig, the DNS name rule (the TSIG key is read by labgate.keys)
    sinks.py    [[sink]]       SyslogSinkConfig, FileSinkConfig, WebhookSinkConfig (the transports: workers/sinks/)
    limits.py   [limits]       LimitsConfig, per-owner quotas
    openstack.py [openstack]   OpenStackConfig, router gateway names
    settings.py                Settings (the whole file and its cross-section checks), load_settings, ConfigError
"""

from labgate.config.compat import CompatConfig
from labgate.config.ddns import DDNS_INLINE_SECRET_KEYS, DdnsConfig, dns_name_text
from labgate.config.gateway import (
    GATEWAY_NAME_RE,
    IFNAME_RE,
    NETNS_RE,
    PRIVATE_NETWORKS,
    GatewayConfig,
    parse_port_range,
)
from labgate.config.limits import LimitsConfig
from labgate.config.openstack import OpenStackConfig, project_id, router_gateway_name, router_netns
from labgate.config.server import ServerConfig, database_display, default_data_dir, resolve_database_url
from labgate.config.settings import ConfigError, Settings, load_settings
from labgate.config.sinks import FileSinkConfig, SinkConfig, SyslogSinkConfig, WebhookSinkConfig, sink_names

__all__ = [
    "LimitsConfig",
    "OpenStackConfig",
    "project_id",
    "router_gateway_name",
    "router_netns",
    "DDNS_INLINE_SECRET_KEYS",
    "GATEWAY_NAME_RE",
    "IFNAME_RE",
    "NETNS_RE",
    "PRIVATE_NETWORKS",
    "CompatConfig",
    "ConfigError",
    "DdnsConfig",
    "FileSinkConfig",
    "GatewayConfig",
    "ServerConfig",
    "Settings",
    "SinkConfig",
    "SyslogSinkConfig",
    "WebhookSinkConfig",
    "database_display",
    "default_data_dir",
    "dns_name_text",
    "load_settings",
    "parse_port_range",
    "resolve_database_url",
    "sink_names",
]
