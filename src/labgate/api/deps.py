"""Injected dependencies: the service object and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labgate.service import Labgate
from labgate.core.tokens import Principal, authenticate

_bearer = HTTPBearer(auto_error=False, description="An API token from `labgate token create`")


def get_labgate(request: Request) -> Labgate:
    return request.app.state.labgate


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    lg: Labgate = request.app.state.labgate
    principal = authenticate(lg.db, credentials.credentials if credentials else None)
    request.state.owner = principal.owner
    return principal


LabgateDep = Annotated[Labgate, Depends(get_labgate)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
