"""The API's front door (an ASGI middleware, outside every route): who is calling, how often, how much they send,
and the security headers on every answer.

For /api/v1/* the bearer token is authenticated *before* anything reads the body (the body of an unknown caller is
never read: 401 at once), and the Principal is left in `scope["state"]["principal"]`, i.e. `request.state.principal`,
for the routes' dependency. The caller's token then draws from its token bucket (`rate_limit` per second, bursts of
`rate_limit_burst`): 429 with Retry-After when empty. Every request's body is limited to `max_body_bytes`: a larger
Content-Length is 413 before a byte is read; a body of unknown length is counted while read, 413 when it goes over.
Bodies of /api/* requests are read here (never more than the limit) and handed on whole.

Failed logins (any 401 to a request that carried a bearer token or the vLab `X-Auth` JWT, whoever answered it) are
counted per client address, the TCP peer (see FailedLogins): after `failed_login_limit` of them within
`failed_login_window` seconds, every request from that address that carries a credential is answered 429 with
Retry-After until the window ends, before its credential is looked at.

Not authenticated here: /healthz, /docs and its assets, /openapi.json, /metrics (its route does it), and the vLab
API /api/1/* (its JWT is checked by its own router). When authentication itself fails (the database is down) there
is no verdict here: the route's dependency authenticates again and the app's exception handlers answer."""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labgate.core.errors import Unauthorized
from labgate.core.tokens import Principal, authenticate
from labgate.service import Labgate

log = logging.getLogger("labgate.api")

AUTHENTICATED_PREFIX = "/api/v1"
VLAB_PREFIX = "/api/1/"
# Paths that never look at a credential: never refused for an address's failed logins.
PUBLIC_PATHS = ("/healthz", "/api/1/ipam/healthcheck", "/openapi.json")
# Pages and assets of the interactive docs: cacheable (everything else is `Cache-Control: no-store`).
DOCS_PATHS = ("/docs", "/redoc", "/static-offline-docs/")
# Requests that carry many forwards at once: their bodies may be up to max_batch_body_bytes.
BATCH_PATHS = ("/api/v1/forwards/batch", "/api/v1/forwards/apply")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000")
NO_STORE = (b"cache-control", b"no-store")

# authenticate(db, token, client=None) where the token may be bound to client networks; older: (db, token).
_TAKES_CLIENT = "client" in inspect.signature(authenticate).parameters


def is_authenticated_path(path: str) -> bool:
    return path == AUTHENTICATED_PREFIX or path.startswith(AUTHENTICATED_PREFIX + "/")


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_PATHS)


class TokenBuckets:
    """One token bucket per API token: `rate` requests a second sustained, bursts of `burst`. Used from the event
    loop only (no lock). One entry per token that made a request: bounded by the tokens in the database."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[Any, list[float]] = {}

    def take(self, key: Any, now: float | None = None) -> float:
        """Take one request from `key`'s bucket: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate


class FailedLogins:
    """Failed logins per client address, in fixed windows: the first failure opens a window of `window` seconds;
    once `limit` failures are counted in it, the address is refused until the window ends, and the next failure
    after that opens a new window from zero. Successful logins are not counted (and do not reset the count).

    Bounded memory: windows that ended are dropped as new failures come (they are kept in the order they opened,
    so the ended ones are at the front); beyond `max_addresses` open windows the oldest is dropped. Used from the
    event loop only (no lock)."""

    def __init__(self, limit: int, window: float, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # key -> [window start, failures]

    def retry_after(self, key: str, now: float | None = None) -> float:
        """0.0 if `key` may try to log in, else the seconds until its window ends."""
        now = time.monotonic() if now is None else now
        entry = self._windows.get(key)
        if entry is None or entry[1] < self.limit:
            return 0.0
        return max(0.0, entry[0] + self.window - now)

    def failed(self, key: str, now: float | None = None) -> None:
        """Count one failed login from `key`."""
        now = time.monotonic() if now is None else now
        while self._windows:
            start = next(iter(self._windows.values()))[0]
            if start + self.window > now:
                break
            self._windows.popitem(last=False)
        entry = self._windows.get(key)
        if entry is None:
            self._windows[key] = [now, 1.0]
            while len(self._windows) > self.max_addresses:
                self._windows.popitem(last=False)
        else:
            entry[1] += 1

    def __len__(self) -> int:
        return len(self._windows)


def address_key(host: str | None) -> str:
    """Whose failed logins a request's are: its IPv4 address, or the /64 of its IPv6 address (one host usually
    holds a whole /64 and could take a new address for every try); other names as they are."""
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # h11 refuses such a request before it gets here


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if not value:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# A NUL character in a query string (raw, or %00): PostgreSQL cannot store or compare one in text, so a filter
# holding one was a 500 there; no field may hold one anyway. Refused at the door, whatever the database. (In a
# body, each field's own validation refuses it and names the field.)
def has_nul(query: bytes) -> bool:
    return b"\x00" in query


async def answer(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    """An error answer in the API's shape, {"error": {"code", "message", "field"}}."""
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _presents_credential(scope: Scope) -> bool:
    """Whether the request carries something that is checked as a login: an Authorization header (the API's
    bearer tokens) or X-Auth (the vLab API's JWT)."""
    return bool((_header(scope, b"authorization") or b"").strip() or (_header(scope, b"x-auth") or b"").strip())


async def answer_vlab(scope: Scope, send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    """An error answer in the vLab API's envelope, {"error": str, "content": {}, "params": {query args}}."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        params.setdefault(key, value)
    body = json.dumps({"error": message, "content": {}, "params": params}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def counting_failed_logins(send: Send, failures: FailedLogins, key: str) -> Send:
    """`send` that counts a failed login for `key` when the answer is 401 (whoever answers it: this middleware for
    /api/v1, the /metrics route, the vLab router for its JWT)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 401:
            failures.failed(key)
            if failures.retry_after(key):  # this failure reached the limit: once per window
                log.warning("event=login_blocked client=%s failures=%d window=%g", key, failures.limit,
                            failures.window)
        await send(message)

    return wrapped


def with_security_headers(scope: Scope, send: Send) -> Send:
    """`send` that adds the security headers (and no-store outside the docs, HSTS over TLS) to the answer."""
    extra = list(SECURITY_HEADERS)
    if not scope["path"].startswith(DOCS_PATHS):
        extra.append(NO_STORE)
    if scope.get("scheme") == "https":
        extra.append(HSTS)

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {k.lower() for k, _ in headers}
            headers += [(k, v) for k, v in extra if k not in present]
            message = dict(message, headers=headers)
        await send(message)

    return wrapped


class BodyTooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused (BodyTooLarge) as soon as more than `limit` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then whatever comes next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def wrapped() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return wrapped


class Guard:
    """See the module's docstring."""

    def __init__(self, app: ASGIApp, lg: Labgate) -> None:
        self.app = app
        self.db = lg.db
        cfg = lg.settings.server
        self.max_body = cfg.max_body_bytes
        self.max_batch_body = max(cfg.max_batch_body_bytes, cfg.max_body_bytes)
        self.rate_limit = cfg.rate_limit
        self.rate_limit_burst = cfg.rate_limit_burst
        self.buckets = TokenBuckets(cfg.rate_limit, cfg.rate_limit_burst) if cfg.rate_limit > 0 else None
        self.failed_logins = (FailedLogins(cfg.failed_login_limit, cfg.failed_login_window)
                              if cfg.failed_login_limit > 0 else None)

    def _authenticate(self, token: str | None, client: str | None) -> Principal:
        if _TAKES_CLIENT:
            return authenticate(self.db, token, client=client)
        return authenticate(self.db, token)  # pragma: no cover - before token client networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        send = with_security_headers(scope, send)
        # The peer's address: make_server runs uvicorn without proxy_headers, so no X-Forwarded-For changes it.
        client = scope["client"][0] if scope.get("client") else None
        if self.failed_logins is not None and _presents_credential(scope) and not _is_public(path):
            key = address_key(client)
            wait = self.failed_logins.retry_after(key)
            if wait:
                # Refused before the credential is looked at: a brute force gets `failed_login_limit` tries per
                # window, whatever it sends.
                await self._too_many_failures(scope, send, client, math.ceil(wait))
                return
            send = counting_failed_logins(send, self.failed_logins, key)
        if is_authenticated_path(path):
            try:
                principal: Principal | None = await run_in_threadpool(self._authenticate, _bearer(scope), client)
            except Unauthorized as exc:
                await answer(send, 401, Unauthorized.code, exc.message, {"WWW-Authenticate": "Bearer"})
                return
            except Exception as exc:  # noqa: BLE001 - e.g. the database is down or read-only
                # No verdict: the route's own dependency authenticates again, and the app's exception handlers
                # answer its failure as they answer any other (the body limit below still applies).
                log.debug("event=auth_deferred error=%r", type(exc).__name__)
                principal = None
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
            if principal is not None and self.buckets is not None:
                wait = self.buckets.take(principal.token_id)
                if wait:
                    retry = max(1, math.ceil(wait))
                    await answer(send, 429, "rate_limited",
                                 f"too many requests with this token (at most {self.rate_limit:g} a second, bursts "
                                 f"of {self.rate_limit_burst}): retry after {retry} s",
                                 {"Retry-After": str(retry)})
                    return
        length = _content_length(scope)
        limit = self.max_batch_body if path in BATCH_PATHS else self.max_body
        if length is not None and length > limit:
            await self._too_large(send, limit)
            return
        if path.startswith("/api/") and has_nul(unquote_to_bytes(scope.get("query_string", b""))):
            await self._nul(scope, send)
            return
        if path.startswith("/api/") and (length or _header(scope, b"transfer-encoding") is not None):
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge:
                await self._too_large(send, limit)
                return
            except Disconnected:
                return  # nobody to answer
            receive = replay(body, receive)
        await self.app(scope, receive, send)

    async def _nul(self, scope: Scope, send: Send) -> None:
        message = "a NUL character (%00) is not allowed in a query (no name, address or other value holds one)"
        if scope["path"].startswith(VLAB_PREFIX):
            await answer_vlab(scope, send, 400, message, {})  # the vLab API's status for bad input
        else:
            await answer(send, 422, "invalid", message)

    async def _too_many_failures(self, scope: Scope, send: Send, client: str | None, retry: int) -> None:
        assert self.failed_logins is not None
        retry = max(1, retry)
        message = (f"too many failed logins from {client or 'this address'} (at most "
                   f"{self.failed_logins.limit} in {self.failed_logins.window:g} s): retry after {retry} s")
        headers = {"Retry-After": str(retry)}
        if scope["path"].startswith(VLAB_PREFIX):
            await answer_vlab(scope, send, 429, message, headers)
        else:
            await answer(send, 429, "too_many_failures", message, headers)

    async def _too_large(self, send: Send, limit: int) -> None:
        await answer(send, 413, "too_large", f"the request body is larger than this server accepts ({limit} bytes)")


# --- what the API documents and answers about the above ----------------------------------------------------------

GUARD_ERRORS = {
    "401": "no token, or an invalid, revoked or expired one (`unauthorized`; WWW-Authenticate: Bearer)",
    "413": "the request body is larger than [server] max_body_bytes (`too_large`)",
    "429": "too many requests with this token (`rate_limited`), or too many failed logins from this address "
           "(`too_many_failures`); Retry-After says when to retry",
}


def document_guard_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add 401, 413 and 429 (what Guard answers) to every operation of the OpenAPI `schema` that takes a token,
    keeping what a route documents itself."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorOut" not in components:
        from labgate.api.schemas import ErrorOut

        full = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(full.pop("$defs", {}))
        components["ErrorOut"] = full
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or not operation.get("security"):
                continue
            responses = operation.setdefault("responses", {})
            for status, description in GUARD_ERRORS.items():
                responses.setdefault(status, {"description": description, "content": body})
    return schema


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(routes: list[Any], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path (for a 405's Allow header): each method is tried
    against the routes the way the router matches them."""
    allowed = []
    for method in METHODS:
        probe = dict(scope, method=method)
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.append(method)
    # A route matching the refused method too is a mount whose app refused it (static files): it says itself.
    return [] if scope.get("method") in allowed else allowed
