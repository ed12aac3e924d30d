"""/api/v1/tokens: admins list, create and revoke API tokens. A new token's secret is in the 201 answer only."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status

from labgate.api.deps import AUTH_ERRORS, AdminDep, LabgateDep
from labgate.api.routes.pagination import Limit, Offset, page
from labgate.api.schemas import ErrorOut, Role, TokenCreate, TokenCreated, TokenPage
from labgate.core.tokens import issue_token, page_tokens, revoke_token

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the token's id")]
ERRORS = {**AUTH_ERRORS, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("", response_model=TokenPage, responses=ERRORS)
def list_tokens(
    request: Request,
    lg: LabgateDep,
    who: AdminDep,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    role: Role | None = None,
    status: Literal["active", "expired", "revoked"] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict:
    """Every token (never a secret), oldest first: role, expiry, allowed networks, last use, who created it."""
    total, results = page_tokens(lg.db, owner=owner, role=role, status=status, limit=limit, offset=offset)
    return page(request, total, [t.as_dict() for t in results], limit, offset)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated, responses=ERRORS)
def create_token(body: TokenCreate, lg: LabgateDep, who: AdminDep, response: Response) -> dict:
    """Create a token for `owner`. The answer holds its secret (`token`): the only time it is ever shown."""
    secret, info = issue_token(lg.db, body.owner, role=body.role, expires_at=body.expires_at,
                               allowed_networks=body.allowed_networks, by=who, publisher=lg.labels,
                               project=body.project)
    response.headers["Cache-Control"] = "no-store"
    return {**info.as_dict(), "token": secret}


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_token(token_id: TokenId, lg: LabgateDep, who: AdminDep) -> Response:
    """Revoke a token: refused from the next request on. Revoking a revoked token is a no-op (204)."""
    revoke_token(lg.db, token_id, by=who, publisher=lg.labels)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
