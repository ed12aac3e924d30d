"""Injected dependencies: the service object and the authenticated caller, checked against what its role may do.

Routes take one of:
- `PrincipalDep` / `ReaderDep`: roles that may read the API (admin, user, readonly); the default for any route;
- `WriterDep`: roles that may change things (admin, user); readonly gets 403 `forbidden`;
- `AdminDep`: admins only (tokens, the audit trail);
- `AnyPrincipalDep`: any valid token, whatever its role (only /metrics, which decides what each role sees).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labgate.api.schemas import ErrorOut
from labgate.core.tokens import Principal, authenticate
from labgate.service import Labgate

_bearer = HTTPBearer(auto_error=False, description="An API token from `labgate token create`")

# OpenAPI: what every authenticated route may answer besides its own errors.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no token, or an invalid, revoked or expired one, or one not allowed "
                                            "from this address"},
    403: {"model": ErrorOut, "description": "the token's role may not do this (`forbidden`)"},
}


def get_labgate(request: Request) -> Labgate:
    return request.app.state.labgate


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller: the Principal the authenticating middleware already put in request.state, else authenticated
    here from the bearer token and the peer address."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        lg: Labgate = request.app.state.labgate
        client = request.client.host if request.client else None
        principal = authenticate(lg.db, credentials.credentials if credentials else None, client)
        request.state.principal = principal
    request.state.owner = principal.owner
    return principal


def reader(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return who.require("read")


def writer(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return who.require("write")


def admin(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return who.require("admin")


LabgateDep = Annotated[Labgate, Depends(get_labgate)]
AnyPrincipalDep = Annotated[Principal, Depends(get_principal)]
ReaderDep = Annotated[Principal, Depends(reader)]
PrincipalDep = ReaderDep
WriterDep = Annotated[Principal, Depends(writer)]
AdminDep = Annotated[Principal, Depends(admin)]
