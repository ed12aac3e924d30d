"""The synchronous client. One method per API call, plus idempotent helpers for automation."""

from __future__ import annotations

import email.utils
import math
import os
import time
from typing import Any, Callable, Iterator

import httpx

from labgate import __version__
from labgate.client.errors import ConfigError, ConnectionFailed, LabgateError, RateLimited, error_for
from labgate.client.models import Forward, Gateway, Machine

PAGE = 1000
# A 429 without a usable Retry-After is retried after this many seconds.
DEFAULT_RETRY_AFTER = 1.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 10.2.3) in seconds: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Client:
    """A labgate API client. `url` and `token` default to $LABGATE_URL and $LABGATE_TOKEN.

    Every method raises a LabgateError subclass on failure. The one thing retried is a 429 (rate limited): the
    request is sent again after the server's Retry-After, at most `max_attempts` times in all and as long as the
    waits add up to at most `max_retry_wait` seconds; past that, RateLimited. `on_retry(seconds, error)` is called
    before each wait (the CLI says why it pauses).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, max_attempts: int = 4, max_retry_wait: float = 30.0,
                 on_retry: Callable[[float, LabgateError], None] | None = None) -> None:
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
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max(0.0, max_retry_wait)
        self.on_retry = on_retry

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        waited = 0.0
        attempt = 1
        while True:
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.TimeoutException:
                raise ConnectionFailed(f"labgate at {self.url} did not answer in time") from None
            except httpx.HTTPError as exc:
                raise ConnectionFailed(f"cannot reach labgate at {self.url}: {exc}") from None
            if resp.status_code < 400:
                break
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            error = error_for(resp.status_code, body)
            if not isinstance(error, RateLimited):
                raise error
            # Retrying is safe for every method, POST included: labgate answers 429 (rate limit, failed logins)
            # in its front door, before the request reaches a route, so a refused request did nothing.
            # Other errors are not retried: a create that failed in any other way may have been done.
            wait = retry_after_seconds(resp.headers.get("retry-after"))
            error.retry_after = wait
            wait = DEFAULT_RETRY_AFTER if wait is None else wait
            if attempt >= self.max_attempts or waited + wait > self.max_retry_wait:
                raise self._gave_up(error, attempt, waited, wait)
            if self.on_retry is not None:
                self.on_retry(wait, error)
            time.sleep(wait)
            waited += wait
            attempt += 1
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def _gave_up(self, error: RateLimited, attempts: int, waited: float, wait: float) -> RateLimited:
        """The error to raise when a 429 is not retried any more: what the server said, and why we stop."""
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if waited:
            tried += f" over {math.ceil(waited)} s"
        if attempts >= self.max_attempts:
            why = "no attempt left"
        else:
            why = f"waiting {math.ceil(wait)} s more would pass this client's {self.max_retry_wait:g} s limit"
        error.message = f"{error.message} (gave up after {tried}: {why})"
        error.args = (error.message,)
        if wait and error.code != "too_many_failures":
            error.hint = f"nothing was changed; try again in {math.ceil(wait)} s"
        return error

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

    def create_forward(self, target_address: str | None, target_port: int, **fields: Any) -> Forward:
        """Create a forward; optional fields: name, kind, protocol, gateway, external_port, port_count,
        allowed_sources, description, enabled; with OpenStack target_port_id or target_server instead of
        target_address (None). Returns once the gateway forwards it."""
        body = {"target_address": target_address, "target_port": target_port, **fields}
        body = {k: v for k, v in body.items() if v is not None}
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

    def batch(self, create: list[dict[str, Any]] | None = None, delete: list[int] | None = None) -> dict[str, Any]:
        """Create and delete many forwards of one gateway in one request: one transaction and one kernel change,
        all or nothing. `create`: bodies as for create_forward; `delete`: forward ids. Returns {"status"
        ("applied" | "pending"), "created", "deleted", "forwards": [Forward, ...] (the created, in order)}."""
        body = {"create": [{k: v for k, v in c.items() if v is not None} for c in create or []],
                "delete": [int(i) for i in delete or []]}
        out = self._request("POST", "/api/v1/forwards/batch", json=body)
        return {**out, "forwards": [Forward.from_api(f) for f in out["forwards"]]}

    def apply_forwards(self, forwards: list[dict[str, Any]]) -> dict[str, Any]:
        """Make these forwards exist (each by name, target_port and protocol, on one gateway) in one request: the
        missing created, those whose target or stated settings differ changed, the rest left alone; all or
        nothing. Returns {"status", "created", "updated", "unchanged", "forwards": [Forward, ...] (in order)}."""
        body = {"forwards": [{k: v for k, v in f.items() if v is not None} for f in forwards]}
        out = self._request("POST", "/api/v1/forwards/apply", json=body)
        return {**out, "forwards": [Forward.from_api(f) for f in out["forwards"]]}

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

    def cluster_status(self) -> dict[str, Any]:
        """The cluster (admins): {"database", "leader", "this_process_leads", "agents": [{name, host, alive, ...}]}."""
        return self._request("GET", "/api/v1/cluster")

    def openstack_status(self) -> dict[str, Any]:
        """OpenStack (docs/openstack.md): {"configured", "cloud", "last_cycle": {...}, "last_successful_cycle", ...}."""
        return self._request("GET", "/api/v1/openstack")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")
