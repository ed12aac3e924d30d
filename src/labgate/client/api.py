"""The synchronous client. One method per API call, plus idempotent helpers for automation."""

from __future__ import annotations

import os
from typing import Any, Iterator

import httpx

from labgate import __version__
from labgate.client.errors import ConfigError, ConnectionFailed, LabgateError, error_for
from labgate.client.models import Forward, Gateway, Machine

PAGE = 1000


class Client:
    """A labgate API client. `url` and `token` default to $LABGATE_URL and $LABGATE_TOKEN.

    Every method raises a LabgateError subclass on failure; nothing is retried behind your back.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        url = url or os.environ.get("LABGATE_URL")
        token = token or os.environ.get("LABGATE_TOKEN")
        if not url:
            raise ConfigError("no labgate URL given")
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"labgate URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"labgate-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise ConnectionFailed(f"labgate at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach labgate at {self.url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise error_for(resp.status_code, body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- forwards ------------------------------------------------------------------------------------------------
    def iter_forwards(self, **filters: Any) -> Iterator[Forward]:
        """Every forward matching the filters (name, kind, target_address, target_port, external_port, protocol,
        gateway, owner), following pages."""
        params = {k: v for k, v in filters.items() if v is not None}
        offset = 0
        while True:
            page = self._request("GET", "/api/v1/forwards", params={**params, "limit": PAGE, "offset": offset})
            for item in page["results"]:
                yield Forward.from_api(item)
            offset += PAGE
            if not page.get("next"):
                return

    def list_forwards(self, **filters: Any) -> list[Forward]:
        return list(self.iter_forwards(**filters))

    def get_forward(self, forward_id: int) -> Forward:
        return Forward.from_api(self._request("GET", f"/api/v1/forwards/{int(forward_id)}"))

    def create_forward(self, target_address: str, target_port: int, **fields: Any) -> Forward:
        """Create a forward; optional fields: name, kind, protocol, gateway, external_port, port_count,
        allowed_sources, description, enabled. Returns once the gateway forwards it."""
        body = {"target_address": target_address, "target_port": target_port,
                **{k: v for k, v in fields.items() if v is not None}}
        return Forward.from_api(self._request("POST", "/api/v1/forwards", json=body))

    def update_forward(self, forward_id: int, **changes: Any) -> Forward:
        """Change description, enabled, allowed_sources, name, kind, target_address or target_port."""
        return Forward.from_api(self._request("PATCH", f"/api/v1/forwards/{int(forward_id)}", json=changes))

    def enable_forward(self, forward_id: int) -> Forward:
        return self.update_forward(forward_id, enabled=True)

    def disable_forward(self, forward_id: int) -> Forward:
        return self.update_forward(forward_id, enabled=False)

    def delete_forward(self, forward_id: int) -> None:
        self._request("DELETE", f"/api/v1/forwards/{int(forward_id)}")

    def ensure_forward(self, name: str, target_address: str, target_port: int, *, protocol: str = "tcp",
                       gateway: str | None = None, **fields: Any) -> Forward:
        """Idempotent: the forward of machine `name` to `target_port`/`protocol`, created if missing and
        retargeted if the machine's address changed. Safe to call again and again from automation."""
        for fwd in self.iter_forwards(name=name, target_port=target_port, protocol=protocol, gateway=gateway):
            changes = {}
            if fwd.target_address != target_address:
                changes["target_address"] = target_address
            for key in ("kind", "description", "allowed_sources", "enabled"):
                if key in fields and fields[key] is not None and getattr(fwd, key) != fields[key]:
                    changes[key] = fields[key]
            return self.update_forward(fwd.id, **changes) if changes else fwd
        return self.create_forward(target_address, target_port, name=name, protocol=protocol, gateway=gateway,
                                   **fields)

    def remove_machine_forwards(self, name: str, *, gateway: str | None = None) -> int:
        """Delete every forward of machine `name` (e.g. when automation deletes the VM); returns how many."""
        gone = 0
        for fwd in self.list_forwards(name=name, gateway=gateway):
            try:
                self.delete_forward(fwd.id)
                gone += 1
            except LabgateError as exc:
                if exc.status != 404:
                    raise
        return gone

    # --- views ---------------------------------------------------------------------------------------------------
    def list_machines(self, **filters: Any) -> list[Machine]:
        params = {k: v for k, v in filters.items() if v is not None}
        out: list[Machine] = []
        offset = 0
        while True:
            page = self._request("GET", "/api/v1/machines", params={**params, "limit": PAGE, "offset": offset})
            out.extend(Machine.from_api(m) for m in page["results"])
            offset += PAGE
            if not page.get("next"):
                return out

    def list_gateways(self) -> list[Gateway]:
        return [Gateway.from_api(g) for g in self._request("GET", "/api/v1/gateways")]

    def ddns_status(self) -> dict[str, Any]:
        """Dynamic DNS: {"configured", "server", "zone", "key_name", "gateways": [...], "machines": {...}}."""
        return self._request("GET", "/api/v1/ddns")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")
