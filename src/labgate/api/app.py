"""The FastAPI application: routers, uniform error bodies, and the service's lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DisconnectionError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from labgate import __version__
from labgate.api.routes import (
    audit, cluster, compat, ddns, events, forwards, gateways, health, limits, machines, openstack, tokens)
from labgate.api.middleware import Guard, allowed_methods, document_guard_errors
from labgate.core.errors import DatabaseUnavailable, LabgateError, PortTaken
from labgate.service import Labgate

log = logging.getLogger("labgate.api")


def _error(status: int, code: str, message: str, field: str | None = None, **extra) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field, **extra}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


NOT_JSON = "the request body is not valid JSON: send a JSON object (Content-Type: application/json)"


class JsonBodies:
    """Every body this API accepts is JSON, so a body is read as JSON whatever its Content-Type says: `curl -d`
    sends application/x-www-form-urlencoded, and the README's first example must not fail on that. A body that is
    not JSON is then a 422 saying so."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            declared = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            mime = declared.split(b";")[0].strip().lower()
            if mime != b"application/json" and not mime.endswith(b"+json"):
                scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


def create_app(lg: Labgate, *, manage_lifecycle: bool = True) -> FastAPI:
    """The API for service `lg`. With manage_lifecycle, the app starts and stops it (migrations, dataplane)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle and not lg.started:
            lg.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                lg.stop()

    # The docs' Swagger UI and ReDoc assets are served by labgate itself: gateways are often offline.
    app = FastAPIOffline(title="labgate", version=__version__, lifespan=lifespan,
                         description="Self-service port forwarding into lab networks.")
    app.add_middleware(JsonBodies)
    # Outermost (added last): the token is checked and the body limited before anything reads the body.
    app.add_middleware(Guard, lg=lg)
    app.state.labgate = lg
    for r in (health.router, forwards.router, machines.router, gateways.router, cluster.router, events.router,
              ddns.router, tokens.router, audit.router, limits.router, openstack.router):
        app.include_router(r)
    compat.mount(app, lg)  # the vLab /api/1/ipam/* and /api/1/quota API, only when [compat] vlab_enabled = true

    @app.exception_handler(LabgateError)
    async def _labgate_error(_req: Request, exc: LabgateError) -> JSONResponse:
        extra = {"holder": exc.holder} if isinstance(exc, PortTaken) and exc.holder else {}
        if exc.status >= 500:
            log.error("event=request_failed code=%s message=%r", exc.code, exc.message)
        return _error(exc.status, exc.code, exc.message, exc.field, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        # For a JSON syntax error the "location" is a character offset, not a field.
        field = None if first.get("type") == "json_invalid" else (".".join(loc) or None)
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = NOT_JSON
        elif first.get("type") == "extra_forbidden":
            msg = "unknown field"
        return _error(422, "invalid", f"{field}: {msg}" if field else msg, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # A body that cannot be decoded at all is invalid input like any other: 422, one error shape.
            return _error(422, "invalid", f"{NOT_JSON} ({exc.detail})")
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _error(exc.status_code, code, str(exc.detail))
        if exc.status_code == 405:
            # Every method served at this path (Starlette's own Allow names only the first matching route's).
            allow = ", ".join(allowed_methods(app.routes, _req.scope)) or (exc.headers or {}).get("Allow", "GET, HEAD")
            response.headers["Allow"] = allow
        return response

    async def _database(_req: Request, exc: Exception) -> JSONResponse:
        # The database cannot be used (read-only, missing, disk full, unreachable): 503 saying why, logged once
        # per cause by lg.db.failed. Any other database error is a bug: the 500 below.
        err = DatabaseUnavailable(f"{lg.db.failed(exc)} (nothing was changed)")
        return _error(err.status, err.code, err.message)

    for database_error in (OperationalError, DisconnectionError):
        app.add_exception_handler(database_error, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("event=unhandled_error")
        return _error(500, "internal", "internal error; the change was not applied (see the server log)")

    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_guard_errors(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
