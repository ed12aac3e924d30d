"""API tokens: created once and shown once, stored only as SHA-256, checked on every request."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from labgate.core.errors import NotFound, Unauthorized
from labgate.core.validation import check_owner
from labgate.db.models import Token
from labgate.db.session import Database

PREFIX = "lg_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner name forwards are recorded under, and whether they may see everyone's."""

    owner: str
    admin: bool
    token_id: int | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, owner: str, *, admin: bool = False) -> str:
    """Store a new token for `owner` and return its secret (the only time it exists in clear)."""
    check_owner(owner)
    secret = PREFIX + secrets.token_urlsafe(32)
    with db.writer() as s, s.begin():
        s.add(Token(owner=owner, token_hash=hash_token(secret), admin=admin, revoked=False))
    return secret


def authenticate(db: Database, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
    with db.reader() as s:
        row = s.execute(
            select(Token.id, Token.owner, Token.admin).where(Token.token_hash == hash_token(token),
                                                             Token.revoked.is_(False))
        ).first()
    if row is None:
        raise Unauthorized("invalid or revoked token")
    return Principal(owner=row.owner, admin=row.admin, token_id=row.id)


def list_tokens(db: Database) -> list[dict]:
    with db.reader() as s:
        return [
            {"id": t.id, "owner": t.owner, "admin": t.admin, "revoked": t.revoked, "created_at": t.created_at}
            for t in s.scalars(select(Token).order_by(Token.id))
        ]


def revoke_token(db: Database, token_id: int) -> None:
    with db.writer() as s, s.begin():
        token = s.get(Token, token_id)
        if token is None:
            raise NotFound(f"token {token_id} does not exist")
        token.revoked = True
