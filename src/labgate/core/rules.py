"""The kernel's view of a forward: a stored row turned into the ForwardRule the dataplane renders."""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from typing import TYPE_CHECKING, Any

from labgate.dataplane.render import ForwardRule, RuleRow
from labgate.db.queries import enabled_rule_rows, enabled_rule_tuples

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from labgate.db.session import Database


@functools.lru_cache(maxsize=65536)
def ipv4(text: str) -> ipaddress.IPv4Address:
    # Rows hold addresses already validated and normalized on write; building from the packed form is ~4x faster
    # than parsing, which matters when 50,000 rows are loaded for a full re-render.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return ipaddress.IPv4Address(text)  # raises ValueError with the usual message


def sources(value: Any) -> tuple[ipaddress.IPv4Network, ...]:
    """allowed_sources as stored (a list, or the raw JSON text of a column read without decoding)."""
    if isinstance(value, str):  # parse only when not empty: most forwards have none
        value = json.loads(value) if value not in ("[]", "") else ()
    return tuple(ipaddress.IPv4Network(n) for n in (value or ()))


def rule_of(fwd: Any, external: ipaddress.IPv4Address) -> ForwardRule:
    """The rule of a forward row (any object with the Forward columns as attributes), towards `external`."""
    return ForwardRule(
        id=fwd.id,
        protocol=fwd.protocol,
        external_address=external,
        external_port=fwd.external_port,
        target_address=ipv4(fwd.target_address),
        target_port=fwd.target_port,
        port_count=fwd.port_count,
        allowed_sources=sources(fwd.allowed_sources),
    )


class CommittedRules:
    """The dataplane's RulesSource: the committed rules of a gateway's enabled forwards, from the database."""

    def __init__(self, db: "Database") -> None:
        self.db = db

    def enabled_rules(self, gateway: str, external: ipaddress.IPv4Address,
                      session: "Session | None" = None) -> list[ForwardRule]:
        """Through `session` its pending changes are included; without one, the committed state."""
        if session is not None:
            return [rule_of(r, external) for r in enabled_rule_rows(session, gateway)]
        with self.db.reader() as s:
            return [rule_of(r, external) for r in enabled_rule_rows(s, gateway)]

    def enabled_rows(self, gateway: str, session: "Session | None" = None) -> list[RuleRow]:
        """The same forwards as rows (render.RuleRow), for a full render: no object per forward."""
        if session is not None:
            return enabled_rule_tuples(session, gateway)
        with self.db.reader() as s:
            return enabled_rule_tuples(s, gateway)
