"""The vLab compatibility layer's domain part: verify vLab JWTs, and translate the vlab_ipam_api calls (port maps
and address lookups) into labgate forwards through ForwardService, so ownership, validation, port allocation and
the kernel path are exactly those of /api/v1. Also the answer to vLab's quota call (`no_quota`): labgate enforces
no VM quota.

The translation:  conn_port = external_port, target_addr = target_address, target_name = name,
target_component = kind, routable = reachability (see `routable`: from the health checks, None until they decide).

What vLab clients see ("the vLab view" of an owner): their enabled, single-port TCP forwards on the compat gateway
that carry both a name and a kind - exactly the rows the original's table could hold. UDP forwards, port blocks,
disabled forwards and forwards without name/kind made through /api/v1 stay out of the view, so vLab clients never
meet a shape they cannot handle."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import jwt

from labgate.config import CompatConfig, GatewayConfig
from labgate.core.errors import (
    DataplaneUnavailable,
    InvalidInput,
    LabgateError,
    NotFound,
    PortTaken,
    RangeExhausted,
    Unauthorized,
)
from labgate.core.forwards import ForwardFilter, ForwardService, ForwardSpec
from labgate.core.views import ForwardView
from labgate.core.tokens import Principal
from labgate.core.validation import KIND_RE, NAME_RE, OWNER_RE
from labgate.dataplane.reconcile import DataplaneError
from labgate.keys import load_jwt_key

log = logging.getLogger("labgate.compat")

PAGE = 1000
# The original's messages for the three ways a token fails (vlab_api_common); clients show them to people.
NO_TOKEN = "No auth token sent in HTTP header"
EXPIRED = "No Valid Session Found"
INVALID = "Invalid auth token supplied"
NO_RECORD = "No such port mapping record"


class VlabError(Exception):
    """An error answered in the vLab envelope: {"error": message, "content": {}, "params": {...}}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_labgate(exc: LabgateError) -> VlabError:
    """The vLab status for a labgate error: bad input is a 400 (as the original's schema check), conflicts 409,
    and a kernel refusal a 500 (the original's status for a failed firewall change; vlab-cli's 503 retry path
    is broken, so a 503 would crash it instead of showing the reason): every failure of the service is a 500."""
    if isinstance(exc, InvalidInput):
        return VlabError(400, exc.message)
    if isinstance(exc, (PortTaken, RangeExhausted)):
        return VlabError(409, exc.message)
    if isinstance(exc, NotFound):
        return VlabError(404, exc.message)
    if isinstance(exc, Unauthorized):
        return VlabError(401, exc.message)
    if isinstance(exc, DataplaneUnavailable):
        return VlabError(500, exc.message)
    return VlabError(exc.status if 400 <= exc.status < 500 else 500, exc.message)


# --- authentication ---------------------------------------------------------------------------------------------
class TokenVerifier:
    """Checks a vLab token: signature with the configured key and only the configured algorithm, issuer, expiry.
    The owner of forwards is the configured claim; a vLab caller is never an admin."""

    def __init__(self, cfg: CompatConfig) -> None:
        if not (cfg.vlab_enabled and cfg.jwt_algorithm and cfg.jwt_key_file and cfg.jwt_issuer):
            raise ValueError("the vLab compatibility API is not configured")
        self.algorithm = cfg.jwt_algorithm
        self.issuer = cfg.jwt_issuer
        self.claim = cfg.owner_claim
        self.leeway = cfg.jwt_leeway
        self._key = load_jwt_key(cfg.jwt_algorithm, cfg.jwt_key_file)

    def verify(self, token: str | None, client: str | None = None) -> Principal:
        token = (token or "").strip()
        if not token:
            raise VlabError(401, NO_TOKEN)
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[self.algorithm], issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss"], "verify_signature": True, "verify_exp": True,
                         "verify_iss": True, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise VlabError(401, EXPIRED) from None
        except jwt.InvalidIssuerError:
            raise VlabError(401, f"{INVALID}: wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise VlabError(401, f"{INVALID}: no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise VlabError(401, INVALID) from None
        except Exception:  # noqa: BLE001 - a malformed token must never become a 500
            raise VlabError(401, INVALID) from None
        owner = claims.get(self.claim)
        if not isinstance(owner, str) or not owner:
            raise VlabError(401, f"{INVALID}: no {self.claim!r} claim")
        if not OWNER_RE.fullmatch(owner):
            raise VlabError(401, f"{INVALID}: the {self.claim!r} claim is not usable as an owner name")
        return Principal(owner=owner, admin=False, client=client)  # client: for the audit trail


# --- reachability -----------------------------------------------------------------------------------------------
def routable(address_states: list[str]) -> bool | None:
    """THE place where reachability plugs in: whether a machine answers, from its addresses' health states.

    vLab showed this as "Connectable": True when every address is up, False when one is down, None while the
    health checks have not decided yet (as the original before its first ping)."""
    if not address_states or "unknown" in address_states and "down" not in address_states:
        return None
    return "down" not in address_states


# --- quota ------------------------------------------------------------------------------------------------------
# `vlab status` (vlab-cli 2021.3.2, vlab_cli/subcommands/status.py) asks GET /api/1/quota of vLab's quota service
# (vlab_quota) and reads four keys of "content": "soft-limit" (the VM count limit: printed as "VM Quota", and a
# warning is printed when the user has more VMs than that), "exceeded_on" (epoch seconds of the violation, 0 for
# none: when non-zero the CLI prints it and exceeded_on + "grace_period" as the date of automatic VM deletion) and
# "last_notified" (epoch seconds of the last warning mail, 0 for never). labgate counts no VMs and deletes nothing.
NO_LIMIT = 2**31 - 1  # the largest value a 32-bit signed integer holds: no count of VMs ever exceeds it


def no_quota() -> dict[str, int]:
    """The quota answer meaning "no quota enforced, never exceeded, nothing scheduled for deletion", in the types
    the original used (integers: vlab-cli compares soft-limit with a count and adds grace_period to exceeded_on)."""
    return {"exceeded_on": 0, "last_notified": 0, "grace_period": 0, "soft-limit": NO_LIMIT}


# --- the vLab view ----------------------------------------------------------------------------------------------
@dataclass
class PortmapQuery:
    """GET /api/1/ipam/portmap's filters, AND-ed; None (or the original's 0 / empty) means "no filter"."""

    name: str | None = None
    target_addr: str | None = None
    component: str | None = None
    conn_port: int | None = None
    target_port: int | None = None


def _in_view(fwd: ForwardView) -> bool:
    return (fwd.protocol == "tcp" and fwd.port_count == 1 and fwd.enabled
            and fwd.name is not None and fwd.kind is not None)


def _normal_address(text: str) -> str | None:
    """The stored form of an IPv4 address, or None when `text` cannot name one (so it matches nothing)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


class VlabService:
    """The vlab_ipam_api calls for one gateway, on top of ForwardService."""

    def __init__(self, forwards: ForwardService, gateway: GatewayConfig) -> None:
        self.forwards = forwards
        self.gateway = gateway

    def gateway_ip(self) -> str:
        """The gateway's external address: what vLab clients connect to."""
        gwdp = self.forwards.dataplane.get(self.gateway.name)
        assert gwdp is not None
        if gwdp.external_address is None:
            try:
                gwdp.refresh_addresses()
            except DataplaneError as exc:
                raise VlabError(500, f"gateway {self.gateway.name!r} is not ready: {exc}") from None
        if gwdp.external_address is None:
            raise VlabError(500, f"gateway {self.gateway.name!r} has no external address yet")
        return str(gwdp.external_address)

    def _forwards(self, who: Principal, flt: ForwardFilter) -> list[ForwardView]:
        """Every forward of `who` matching `flt` on the compat gateway, oldest first, in the vLab view."""
        flt.gateway, flt.protocol = self.gateway.name, "tcp"
        out: list[ForwardView] = []
        offset = 0
        while True:
            total, rows = self.forwards.list(who, flt, limit=PAGE, offset=offset)
            out.extend(rows)
            offset += len(rows)
            if not rows or offset >= total:
                break
        return [f for f in out if _in_view(f)]

    def list_ports(self, who: Principal, q: PortmapQuery) -> dict[str, Any]:
        flt = ForwardFilter(target_port=q.target_port, external_port=q.conn_port)
        # A value no stored forward can have matches nothing: answer without asking the database.
        if q.name is not None:
            if not NAME_RE.fullmatch(q.name):
                return {"ports": {}, "gateway_ip": self.gateway_ip()}
            flt.name = q.name
        if q.component is not None:
            if not KIND_RE.fullmatch(q.component):
                return {"ports": {}, "gateway_ip": self.gateway_ip()}
            flt.kind = q.component
        if q.target_addr is not None:
            addr = _normal_address(q.target_addr)
            if addr is None:
                return {"ports": {}, "gateway_ip": self.gateway_ip()}
            flt.target_address = addr
        ports: dict[str, Any] = {}
        for fwd in self._forwards(who, flt):
            ports[str(fwd.external_port)] = {
                "name": fwd.name,
                "target_addr": fwd.target_address,
                "target_port": fwd.target_port,
                "component": fwd.kind,
            }
        return {"ports": ports, "gateway_ip": self.gateway_ip()}

    def create(self, who: Principal, target_addr: str, target_port: int, target_name: str,
               target_component: str) -> dict[str, Any]:
        """A new forward, like every POST of the original (it never de-duplicated); returns {"conn_port": n}."""
        fwd = self.forwards.create(who, ForwardSpec(
            target_address=target_addr, target_port=target_port, name=target_name, kind=target_component,
            protocol="tcp", gateway=self.gateway.name))
        log.info("event=vlab_portmap_created id=%d owner=%s conn_port=%d", fwd.id, who.owner,
                 fwd.external_port)
        return {"conn_port": fwd.external_port}

    def delete(self, who: Principal, conn_port: int) -> None:
        """Remove the caller's single-port TCP forward at `conn_port` on the compat gateway (whatever its name,
        kind or enabled state: the caller asked for that port to stop forwarding). 404 when there is none."""
        flt = ForwardFilter(external_port=conn_port, gateway=self.gateway.name, protocol="tcp")
        _, rows = self.forwards.list(who, flt, limit=10)
        match = [f for f in rows if f.external_port == conn_port and f.port_count == 1]
        if not match:
            raise VlabError(404, NO_RECORD)
        try:
            self.forwards.delete(who, match[0].id)
        except NotFound:  # deleted meanwhile by another request
            raise VlabError(404, NO_RECORD) from None
        log.info("event=vlab_portmap_deleted id=%d owner=%s conn_port=%d", match[0].id, who.owner, conn_port)

    def lookup_addr(self, who: Principal, *, name: str | None, addr: str | None,
                    component: str | None) -> dict[str, Any]:
        """{"<name>": {"component", "routable", "addr": [ips]}} for the caller's machines (at most one filter)."""
        flt = ForwardFilter()
        if name is not None:
            if not NAME_RE.fullmatch(name):
                return {}
            flt.name = name
        if component is not None:
            if not KIND_RE.fullmatch(component):
                return {}
            flt.kind = component
        if addr is not None:
            normal = _normal_address(addr)
            if normal is None:
                return {}
            flt.target_address = normal
        machines: dict[str, dict[str, Any]] = {}
        states: dict[str, dict[str, str]] = {}
        for fwd in self._forwards(who, flt):
            entry = machines.setdefault(fwd.name, {"component": fwd.kind, "routable": None, "addr": []})
            entry["component"] = fwd.kind  # as the original: the last row's component wins
            if fwd.target_address not in entry["addr"]:
                entry["addr"].append(fwd.target_address)
            states.setdefault(fwd.name, {})[fwd.target_address] = fwd.health.address
        for machine_name, entry in machines.items():
            entry["routable"] = routable(list(states[machine_name].values()))
        return machines
