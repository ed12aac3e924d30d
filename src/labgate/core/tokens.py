"""API tokens: created once and shown once, stored only as SHA-256, checked on every request.

A token has a role, and may have an expiry and a list of client networks it may be used from:

- `admin`: everything, everyone's forwards, tokens and the audit trail;
- `user`: their own forwards (create, read, change, delete), machines, gateways, events;
- `readonly`: reads what a user may read (GET), never changes anything (403 `forbidden`);
- `metrics`: only `GET /metrics`, per-forward series included (for a Prometheus scraper), nothing else.

`last_used_at` is written at most once a minute per token, by a background thread: a request never waits for the
database's write lock because it was authenticated.
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import logging
import queue
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import and_, func, or_, select, true, update

from labgate.config import project_id
from labgate.core import audit
from labgate.core.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from labgate.core.validation import check_owner
from labgate.db.models import Token, utcnow
from labgate.db.session import Database
from labgate.events import Discard, Publisher

log = logging.getLogger("labgate.tokens")

PREFIX = "lg_"
ADMIN, USER, READONLY, METRICS = "admin", "user", "readonly", "metrics"
ROLES = (ADMIN, USER, READONLY, METRICS)
MAX_NETWORKS = 64
TOUCH_INTERVAL = timedelta(seconds=60)

# What each role may do. "read": GET the API (own objects; admins everyone's); "write": create/change/delete own
# forwards; "admin": everyone's objects, tokens, the audit trail; "metrics": GET /metrics; "metrics_detail": the
# per-forward series in it (names, owners, bytes of every user's forwards).
_ALLOWED: dict[str, frozenset[str]] = {
    ADMIN: frozenset({"read", "write", "admin", "metrics", "metrics_detail"}),
    USER: frozenset({"read", "write", "metrics"}),
    READONLY: frozenset({"read", "metrics"}),
    METRICS: frozenset({"metrics", "metrics_detail"}),
}
_REFUSAL = {
    "read": "may only read /metrics",
    "write": "cannot change anything",
    "admin": "is not an admin token: this needs one",
    "metrics": "may not read metrics",
    "metrics_detail": "may not see per-forward metrics",
}


@dataclass(frozen=True, init=False)
class Principal:
    """Who is calling: the owner name forwards are recorded under, the token's role (`admin` is role == "admin"),
    the token's id (None for callers without a labgate token: the vLab compat API, the local CLI) and the peer
    address the request came from (None when unknown). `project`: the OpenStack project a token is scoped to (it
    sees and changes only forwards on that project's routers), or None."""

    owner: str
    role: str
    token_id: int | None
    client: str | None
    project: str | None

    def __init__(self, owner: str, admin: bool | None = None, token_id: int | None = None, *,
                 role: str | None = None, client: str | None = None, project: str | None = None) -> None:
        if role is None:
            role = ADMIN if admin else USER
        elif admin is not None and admin != (role == ADMIN):
            raise ValueError(f"admin={admin} contradicts role {role!r}")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "token_id", token_id)
        object.__setattr__(self, "client", client)
        object.__setattr__(self, "project", project)

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    def may(self, action: str) -> bool:
        """action: "read", "write", "admin", "metrics" or "metrics_detail"."""
        return action in _ALLOWED[self.role]

    def require(self, action: str) -> "Principal":
        """This principal, or 403 `forbidden` when its role may not do `action`."""
        if not self.may(action):
            raise Forbidden(f"a {self.role} token {_REFUSAL[action]}")
        return self


def local_actor() -> Principal:
    """Who runs a server-side command (`labgate token ...` on the server itself): the local user, as an admin."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name for this uid (containers)
        user = "unknown"
    return Principal(f"local:{user}"[:64], role=ADMIN)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- checks -------------------------------------------------------------------------------------------------------
def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} must be one of {', '.join(ROLES)}", field="role")
    return role


def check_networks(networks: Iterable[str] | None) -> list[str] | None:
    """CIDRs a token may be used from, normalized ("10.1.2.3/8" -> "10.0.0.0/8"); None or [] = anywhere."""
    if networks is None:
        return None
    out: list[str] = []
    for text in networks:
        if not isinstance(text, str):
            raise InvalidInput("allowed_networks must be a list of CIDR strings", field="allowed_networks")
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise InvalidInput(f"allowed_networks: {text!r} is not an IP network (e.g. 192.0.2.0/24 or 2001:db8::/32)",
                               field="allowed_networks") from None
        if str(net) not in out:
            out.append(str(net))
    if len(out) > MAX_NETWORKS:
        raise InvalidInput(f"allowed_networks: at most {MAX_NETWORKS} networks", field="allowed_networks")
    return out or None


def check_expiry(expires_at: datetime | None, now: datetime | None = None) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=timezone.utc)
    try:
        expires_at = expires_at.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00: past the last representable UTC time
        raise InvalidInput("expires_at is out of range", field="expires_at") from None
    if expires_at <= (now or utcnow()):
        raise InvalidInput("expires_at is in the past", field="expires_at")
    return expires_at


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$")


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`--expires`: a duration from now ("12h", "30d", "8w"), a date (valid through that day, UTC:
    "2026-12-31" expires at 2027-01-01T00:00:00Z) or an RFC 3339 time ("2026-12-31T18:00:00+01:00")."""
    now = now or utcnow()
    m = _DURATION.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n == 0:
            raise InvalidInput("expiry must be in the future", field="expires")
        try:
            return now + {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
        except OverflowError:
            raise InvalidInput(f"expiry {text!r} is too far away", field="expires") from None
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            moment = datetime.combine(date.fromisoformat(raw) + timedelta(days=1), time(), tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"expiry {text!r} is not a duration (30d, 12h, 8w), a date (2026-12-31) or a time "
                           "(2026-12-31T18:00:00Z)", field="expires") from None
    except OverflowError:  # the day after 9999-12-31
        raise InvalidInput(f"expiry {text!r} is out of range", field="expires") from None
    try:
        return check_expiry(moment, now)  # type: ignore[return-value]
    except InvalidInput as exc:
        why = exc.message.removeprefix("expires_at ")
        raise InvalidInput(f"expiry {text!r} {why}", field="expires") from None


# --- tokens ---------------------------------------------------------------------------------------------------------
@dataclass
class TokenInfo:
    """A token as it may be shown: never its secret or hash."""

    id: int
    owner: str
    role: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    allowed_networks: list[str] | None
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    status: str = field(default="active")  # active, expired, revoked
    project_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    @classmethod
    def of(cls, t: Token, now: datetime | None = None) -> "TokenInfo":
        now = now or utcnow()
        status = "revoked" if t.revoked else "expired" if t.expires_at is not None and t.expires_at <= now \
            else "active"
        return cls(id=t.id, owner=t.owner, role=t.role, created_at=t.created_at, created_by=t.created_by,
                   expires_at=t.expires_at, allowed_networks=list(t.allowed_networks) if t.allowed_networks else None,
                   last_used_at=t.last_used_at, revoked=t.revoked, revoked_at=t.revoked_at, status=status,
                   project_id=t.project_id)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "role": self.role, "admin": self.admin,
                "created_at": self.created_at, "created_by": self.created_by, "expires_at": self.expires_at,
                "allowed_networks": self.allowed_networks, "last_used_at": self.last_used_at,
                "revoked": self.revoked, "revoked_at": self.revoked_at, "status": self.status,
                "project_id": self.project_id}


def _snapshot(t: Token) -> dict[str, Any]:
    """What the audit trail records of a token (no secret, no hash, nothing that changes on use)."""
    out = {"id": t.id, "owner": t.owner, "role": t.role, "created_by": t.created_by,
           "expires_at": t.expires_at, "allowed_networks": t.allowed_networks, "revoked": t.revoked}
    if t.project_id is not None:
        out["project_id"] = t.project_id
    return out


def issue_token(db: Database, owner: str, *, role: str = USER, expires_at: datetime | None = None,
                allowed_networks: Iterable[str] | None = None, by: Principal | None = None,
                publisher: Publisher | None = None, project: str | None = None) -> tuple[str, TokenInfo]:
    """Store a new token and return (its secret, its description). The secret exists in clear only in this return
    value. The creation is audited (`token.create`, by `by`: the local user when None) in the same transaction."""
    check_owner(owner)
    check_role(role)
    networks = check_networks(allowed_networks)
    expires_at = check_expiry(expires_at)
    if project is not None:
        if role not in (USER, READONLY):
            raise InvalidInput("only user and readonly tokens can be scoped to a project", field="project")
        try:
            project = project_id(project, "project")
        except ValueError as exc:
            raise InvalidInput(str(exc), field="project") from None
    by = by or local_actor()
    secret = PREFIX + secrets.token_urlsafe(32)
    with db.writer() as s, s.begin():
        token = Token(owner=owner, token_hash=hash_token(secret), role=role, revoked=False, created_at=utcnow(),
                      created_by=by.owner[:64], expires_at=expires_at, allowed_networks=networks, project_id=project)
        s.add(token)
        s.flush()
        event = audit.record(s, by, "token.create", token.id, before=None, after=_snapshot(token))
        info = TokenInfo.of(token)
    (publisher or Discard()).publish(event)
    log.info("event=token_created id=%d owner=%s role=%s by=%s", info.id, owner, role, by.owner)
    return secret, info


def create_token(db: Database, owner: str, *, admin: bool = False, role: str | None = None,
                 expires_at: datetime | None = None, allowed_networks: Iterable[str] | None = None,
                 by: Principal | None = None, publisher: Publisher | None = None, project: str | None = None) -> str:
    """Store a new token for `owner` and return its secret (the only time it exists in clear)."""
    if role is not None and admin and role != ADMIN:
        raise InvalidInput(f"--admin contradicts role {role!r}", field="role")
    secret, _ = issue_token(db, owner, role=role or (ADMIN if admin else USER), expires_at=expires_at,
                            allowed_networks=allowed_networks, by=by, publisher=publisher, project=project)
    return secret


def revoke_token(db: Database, token_id: int, *, by: Principal | None = None,
                 publisher: Publisher | None = None) -> TokenInfo:
    """Revoke a token (idempotent: revoking a revoked token changes and audits nothing). 404 if it never existed."""
    by = by or local_actor()
    event = None
    with db.writer() as s, s.begin():
        token = s.get(Token, token_id)
        if token is None:
            raise NotFound(f"token {token_id} does not exist")
        if not token.revoked:
            before = _snapshot(token)
            token.revoked = True
            token.revoked_at = utcnow()
            s.flush()
            event = audit.record(s, by, "token.revoke", token.id, before=before, after=_snapshot(token))
        info = TokenInfo.of(token)
    if event is not None:
        (publisher or Discard()).publish(event)
        log.info("event=token_revoked id=%d owner=%s by=%s", token_id, info.owner, by.owner)
    return info


def list_tokens(db: Database) -> list[dict[str, Any]]:
    """Every token (never a secret or hash), oldest first."""
    _, infos = page_tokens(db, limit=None)
    return [t.as_dict() for t in infos]


def page_tokens(db: Database, *, owner: str | None = None, role: str | None = None, status: str | None = None,
                limit: int | None = 50, offset: int = 0) -> tuple[int, list[TokenInfo]]:
    """(how many match, one page of them), oldest first."""
    now = utcnow()
    conds = []
    if owner is not None:
        conds.append(Token.owner == owner)
    if role is not None:
        conds.append(Token.role == role)
    if status == "revoked":
        conds.append(Token.revoked.is_(True))
    elif status == "expired":
        conds.append(and_(Token.revoked.is_(False), Token.expires_at.is_not(None), Token.expires_at <= now))
    elif status == "active":
        conds.append(and_(Token.revoked.is_(False), or_(Token.expires_at.is_(None), Token.expires_at > now)))
    where = and_(true(), *conds)
    with db.reader() as s:
        total = s.scalar(select(func.count()).select_from(Token).where(where)) or 0
        query = select(Token).where(where).order_by(Token.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return total, [TokenInfo.of(t, now) for t in s.scalars(query)]


# --- authentication ---------------------------------------------------------------------------------------------
def _client_address(client: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not client:
        return None
    try:
        addr = ipaddress.ip_address(client.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _allowed_from(networks: list[str], client: str | None) -> bool:
    addr = _client_address(client)
    if addr is None:
        return False  # a restricted token from an unknown address: refused
    for text in networks:
        try:
            if addr in ipaddress.ip_network(text, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def authenticate(db: Database, token: str | None, client: str | None = None) -> Principal:
    """The principal of a bearer token presented from peer address `client`; 401 when the token is missing,
    unknown, revoked, expired, or not allowed from `client`."""
    if not token:
        raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
    with db.reader() as s:
        row = s.execute(
            select(Token.id, Token.owner, Token.role, Token.expires_at, Token.allowed_networks, Token.last_used_at,
                   Token.project_id)
            .where(Token.token_hash == hash_token(token), Token.revoked.is_(False))
        ).first()
    if row is None:
        raise Unauthorized("invalid or revoked token")
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("this token has expired: ask for a new one")
    if row.allowed_networks and not _allowed_from(row.allowed_networks, client):
        raise Unauthorized(f"this token may not be used from {client or 'an unknown address'}")
    last_used.note(db, row.id, row.last_used_at, now)
    return Principal(row.owner, token_id=row.id, role=row.role, client=client, project=row.project_id)


class LastUsed:
    """Writes tokens' last_used_at from one background thread, at most once per TOUCH_INTERVAL per token: the
    decision is made from the value authenticate() just read, so a request never takes the write lock; a token
    whose write is still pending is not queued twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[tuple[str, int]] = set()
        self._queue: queue.Queue[tuple[Database, int, datetime, tuple[str, int]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failed = False

    def note(self, db: Database, token_id: int, last_used_at: datetime | None, now: datetime) -> None:
        if last_used_at is not None and now - last_used_at < TOUCH_INTERVAL:
            return
        key = (db.url, token_id)
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="token-last-used", daemon=True)
                self._thread.start()
        self._queue.put((db, token_id, now, key))

    def _run(self) -> None:
        while True:
            db, token_id, now, key = self._queue.get()
            try:
                with db.writer() as s, s.begin():
                    s.execute(update(Token).where(Token.id == token_id, or_(
                        Token.last_used_at.is_(None), Token.last_used_at <= now - TOUCH_INTERVAL))
                        .values(last_used_at=now))
                self._failed = False
            except Exception as exc:  # the database busy or gone: last_used_at is a hint, never an error
                if not self._failed:
                    log.warning("event=token_last_used_failed error=%r", exc)
                self._failed = True
            finally:
                with self._lock:
                    self._pending.discard(key)
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued write is done (tests; a clean shutdown)."""
        self._queue.join()


last_used = LastUsed()
