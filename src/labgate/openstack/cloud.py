"""The cloud, as labgate reads it: a few batched Neutron listings through openstacksdk's authenticated session,
every call counted. openstacksdk is an optional extra (`pip install labgate[openstack]`); it is imported only
when an [openstack] section exists.

Listings use `fields=` (only what topology.py reads) and marker paging, so one cycle costs three listings (plus
one call per extra page of 1,000, or of the cloud's pagination_max_limit when lower) whatever the number of
forwards, routers or addresses.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Iterator

from prometheus_client import Counter

from labgate.config.openstack import OpenStackConfig
from labgate.openstack.topology import (PORT_FIELDS, ROUTER_FIELDS, ROUTER_INTERFACE_OWNERS, SUBNET_FIELDS, Port,
                                        Snapshot, parse_port)

log = logging.getLogger("labgate.openstack")

PAGE = 1000
API_CALLS = Counter("labgate_openstack_api_calls_total", "Calls made to the cloud's APIs", ["service", "outcome"])


class CloudError(RuntimeError):
    """The cloud could not be read (unreachable, an error answer, an unreadable answer); str() says why."""


class NameNotUsable(CloudError):
    """A server name cannot be resolved as asked (no compute service, or several servers have it): the request's to
    fix (give the id), unlike a cloud that does not answer now."""


def connect(cfg: OpenStackConfig) -> Any:
    """An openstacksdk Connection to `cfg.cloud` (clouds.yaml), or CloudError saying what is missing."""
    try:
        import openstack  # noqa: PLC0415 - the optional extra
    except ImportError:
        raise CloudError("openstacksdk is not installed: pip install 'labgate[openstack]'") from None
    try:
        if cfg.clouds_file:
            import openstack.config  # noqa: PLC0415
            import openstack.connection  # noqa: PLC0415

            loader = openstack.config.OpenStackConfig(config_files=[cfg.clouds_file], vendor_files=[],
                                                      secure_files=[])
            return openstack.connection.Connection(config=loader.get_one(cloud=cfg.cloud),
                                                   api_timeout=cfg.api_timeout)
        return openstack.connect(cloud=cfg.cloud, api_timeout=cfg.api_timeout)
    except Exception as exc:  # noqa: BLE001 - openstacksdk raises many kinds for a bad clouds.yaml
        raise CloudError(f"cannot use cloud {cfg.cloud!r} from clouds.yaml: {exc}") from None


class Cloud:
    """Neutron reads (and the one Nova lookup a server name needs), counted in `calls`."""

    def __init__(self, cfg: OpenStackConfig, conn: Any | None = None) -> None:
        self.cfg = cfg
        self._conn = conn
        self._lock = threading.Lock()
        self.calls = 0

    @property
    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = connect(self.cfg)
            return self._conn

    # --- raw calls ----------------------------------------------------------------------------------------------
    def _get(self, service: str, path: str, params: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        conn = self.conn
        with self._lock:
            self.calls += 1
        try:
            # The first use of a service discovers its endpoint: that too can find the cloud unreachable.
            resp = getattr(conn, service).get(path, params=params or [], raise_exc=False)
        except Exception as exc:  # noqa: BLE001 - keystoneauth's connection errors, timeouts
            API_CALLS.labels(service, "unreachable").inc()
            raise CloudError(f"{service} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 404:
            API_CALLS.labels(service, "not_found").inc()
            return {}
        if resp.status_code >= 400:
            API_CALLS.labels(service, "error").inc()
            raise CloudError(f"{service} {path} answered {resp.status_code}: {resp.text[:300]!r}")
        API_CALLS.labels(service, "ok").inc()
        try:
            body = resp.json()
        except ValueError:
            raise CloudError(f"{service} {path} answered {resp.status_code} with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise CloudError(f"{service} {path} answered an unexpected body")
        return body

    def _list(self, path: str, key: str, fields: Iterable[str], filters: list[tuple[str, str]] = ()) -> Iterator[dict]:
        params = [("fields", f) for f in fields] + list(filters) + [("limit", str(PAGE))]
        marker = None
        while True:
            body = self._get("network", path, params + ([("marker", marker)] if marker else []))
            items = body.get(key)
            if not isinstance(items, list):
                raise CloudError(f"network {path} answered without a {key!r} list")
            yield from items
            # Neutron caps `limit` at its pagination_max_limit, so a page shorter than PAGE may not be the last: it
            # says "next" while more may follow (and only then). Stopping early would make the rest look deleted.
            links = body.get(f"{key}_links")
            more = isinstance(links, list) and any(isinstance(x, dict) and x.get("rel") == "next" for x in links)
            if not items or not (more or len(items) >= PAGE):
                return
            marker = str(items[-1].get("id"))

    # --- what the monitor and the forward commands read ---------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """One look: routers (of the selected projects), ports and subnets, three listings. `projects` selects
        routers only: a router's networks may be shared ones another project owns, and VMs of other projects may sit
        on them; filtering those out would make their forwards look deleted."""
        projects = [("project_id", p) for p in self.cfg.projects]
        routers = list(self._list("/routers", "routers", ROUTER_FIELDS, projects))
        ports = list(self._list("/ports", "ports", PORT_FIELDS))
        subnets = list(self._list("/subnets", "subnets", SUBNET_FIELDS))
        try:
            return Snapshot.parse(routers, ports, subnets)
        except ValueError as exc:
            raise CloudError(f"unreadable answer: {exc}") from None

    def port(self, port_id: str) -> Port | None:
        body = self._get("network", f"/ports/{port_id}", [("fields", f) for f in PORT_FIELDS])
        return parse_port(body["port"]) if body.get("port") else None

    def existing_ports(self, port_ids: Iterable[str]) -> set[str]:
        """Which of these ports exist: a check of the ports a listing left out before their forwards go (one call
        per 100 ids, and only for ports that look deleted)."""
        ids = sorted(set(port_ids))
        found: set[str] = set()
        for i in range(0, len(ids), 100):
            chunk = [("id", pid) for pid in ids[i:i + 100]]
            found.update(str(p.get("id")) for p in self._list("/ports", "ports", ("id",), chunk))
        return found & set(ids)

    def routed(self, subnet_ids: Iterable[str]) -> bool:
        """Whether a router has an interface on any of these subnets (one small call): a create naming a port
        behind no router is answered without a whole look at the cloud."""
        filters = ([("device_owner", o) for o in sorted(ROUTER_INTERFACE_OWNERS)]
                   + [("fixed_ips", f"subnet_id={sid}") for sid in sorted(set(subnet_ids))])
        return any(True for _ in self._list("/ports", "ports", ("id",), filters))

    def server_ports(self, server_id: str) -> list[Port]:
        return [parse_port(p) for p in self._list("/ports", "ports", PORT_FIELDS, [("device_id", server_id)])]

    def server_by_name(self, name: str, project: str | None = None) -> tuple[str, str] | None:
        """(id, name) of the one server called `name` (Nova; with `project`, among that project's servers only);
        CloudError when there is no compute service or the name is ambiguous."""
        query: dict[str, Any] = {"name": f"^{_regex_quote(name)}$", "all_projects": True}
        if project is not None:
            query["project_id"] = project
        try:
            servers = list(self.conn.compute.servers(**query))
        except Exception as exc:  # noqa: BLE001
            if _unreachable(exc):
                raise CloudError(f"cannot look up server {name!r}: Nova does not answer ({type(exc).__name__})") \
                    from None
            raise NameNotUsable(f"cannot look up server {name!r} (Nova): {exc}; give the server's id instead") \
                from None
        finally:
            with self._lock:
                self.calls += 1
        if not servers:
            return None
        if len(servers) > 1:
            raise NameNotUsable(f"{len(servers)} servers are called {name!r}: give the server's id instead")
        return str(servers[0].id), str(servers[0].name)


def _unreachable(exc: Exception) -> bool:
    """A connection failure or timeout (keystoneauth's; a version discovery that got no answer), as opposed to an
    answer (an error, no such service in the catalog)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectFailure", "ConnectTimeout", "ConnectionError", "Timeout", "RetriableConnectionFailure",
                         "DiscoveryFailure", "SSLError"})


def _regex_quote(text: str) -> str:
    # Nova's name filter is a regular expression: match the name literally.
    return "".join("\\" + c if not c.isalnum() else c for c in text)
