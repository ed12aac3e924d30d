"""The labgate Python SDK: a typed client over httpx for forwards, machines and gateways.

    from labgate.client import Client, NotFound

    with Client("http://gw.example.net:3000", token) as lg:
        ssh = lg.ensure_forward("centos1", "10.9.0.5", 22, kind="centos")
        print(f"ssh -p {ssh.external_port} user@{ssh.external_address}")

Errors are all LabgateError subclasses (Unauthorized, NotFound, PortTaken, RangeExhausted, ValidationFailed,
Unavailable, ConnectionFailed, RateLimited, ...), each with `.message`, `.code`, `.field` and a `.hint` saying what
to do. A 429 (rate limited) is retried after the server's Retry-After, a few times at most (see Client).
"""

from labgate.client.api import Client
from labgate.client.errors import (
    ConfigError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    LabgateError,
    NotFound,
    PortTaken,
    RangeExhausted,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from labgate.client.models import Forward, Gateway, Machine

__all__ = [
    "Client", "Forward", "Gateway", "Machine", "LabgateError", "ConfigError", "Conflict", "ConnectionFailed",
    "Forbidden", "NotFound", "PortTaken", "RangeExhausted", "RateLimited", "ServerError", "Unauthorized",
    "Unavailable", "ValidationFailed",
]
