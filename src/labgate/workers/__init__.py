"""Background services of a labgate process; so far the event layer: events, the bus and the sinks it feeds."""

from labgate.events import Event, describe
from labgate.workers.events import (
    DeliveryError,
    DeliveryPolicy,
    EventBus,
    SinkStats,
)
from labgate.workers.sinks import (
    FileSinkConfig,
    JsonLinesFileSink,
    Sink,
    SinkConfig,
    SyslogSinkConfig,
    SyslogStreamSink,
    SyslogUdpSink,
    WebhookSink,
    WebhookSinkConfig,
    build_sinks,
    sink_names,
)
from labgate.workers.syslog import SD_ID, SyslogFormat, frame

__all__ = [
    "SD_ID",
    "DeliveryError",
    "DeliveryPolicy",
    "Event",
    "EventBus",
    "FileSinkConfig",
    "JsonLinesFileSink",
    "Sink",
    "SinkConfig",
    "SinkStats",
    "SyslogFormat",
    "SyslogSinkConfig",
    "SyslogStreamSink",
    "SyslogUdpSink",
    "WebhookSink",
    "WebhookSinkConfig",
    "build_sinks",
    "describe",
    "frame",
    "sink_names",
]
