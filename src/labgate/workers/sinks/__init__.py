"""Where events go: one module per transport, each a `Sink` (base.py) the EventBus (workers/events.py) feeds.

    base.py     Sink, DeliveryError, DeliveryPolicy: what the bus needs of a transport
    syslog.py   RFC 5424 messages; SyslogUdpSink, SyslogStreamSink (TCP, TLS)
    file.py     JsonLinesFileSink
    webhook.py  WebhookSink

`build_sinks` turns the `[[sink]]` settings (labgate.config.sinks) into sinks.
"""

from __future__ import annotations

import socket
from typing import Sequence

from labgate.config.sinks import (
    FACILITIES,
    SEVERITIES,
    FileSinkConfig,
    SyslogSinkConfig,
    WebhookSinkConfig,
    sink_names,
)
from labgate.workers.sinks.base import DeliveryPolicy, Sink
from labgate.workers.sinks.file import JsonLinesFileSink
from labgate.workers.sinks.syslog import SyslogFormat, SyslogStreamSink, SyslogUdpSink, tls_client_context
from labgate.workers.sinks.webhook import WebhookSink

__all__ = ["build_sinks"]


def _policy(cfg: SyslogSinkConfig | FileSinkConfig | WebhookSinkConfig) -> DeliveryPolicy:
    return DeliveryPolicy(buffer=cfg.buffer, max_batch=cfg.batch, retry_initial=cfg.retry_initial,
                          retry_max=cfg.retry_max, kinds=frozenset(cfg.kinds) if cfg.kinds else None)


def build_sinks(configs: Sequence[SyslogSinkConfig | FileSinkConfig | WebhookSinkConfig]) -> list[Sink]:
    """One Sink per config, in order. Raises ValueError for duplicate names or unusable TLS material.

    Nothing connects here: the first delivery does, so a collector that is down at start is only a retry."""
    sinks: list[Sink] = []
    for name, cfg in zip(sink_names(configs), configs):
        policy = _policy(cfg)
        if isinstance(cfg, SyslogSinkConfig):
            fmt = SyslogFormat(hostname=cfg.hostname or socket.gethostname(), facility=FACILITIES[cfg.facility],
                               severity=SEVERITIES[cfg.severity], sd_id=cfg.sd_id, max_size=cfg.max_message_size)
            if cfg.transport == "udp":
                sinks.append(SyslogUdpSink(name, cfg.host, cfg.effective_port, fmt, policy=policy,
                                           send_timeout=cfg.send_timeout))
            else:
                context = tls_client_context(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.transport == "tls" \
                    else None
                sinks.append(SyslogStreamSink(name, cfg.host, cfg.effective_port, fmt, policy=policy, tls=context,
                                              server_name=cfg.server_name, connect_timeout=cfg.connect_timeout,
                                              send_timeout=cfg.send_timeout))
        elif isinstance(cfg, FileSinkConfig):
            sinks.append(JsonLinesFileSink(name, cfg.path, max_bytes=cfg.max_bytes, backups=cfg.backups,
                                           policy=policy))
        else:
            sinks.append(WebhookSink(name, cfg.url, token_file=cfg.token_file, ca_file=cfg.ca_file,
                                     timeout=cfg.timeout, policy=policy))
    return sinks
