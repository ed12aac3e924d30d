"""/api/1/ipam/* and /api/1/quota: the vLab (vlab_ipam_api 2019.7.x, and vlab_quota's one call) compatibility API,
so vlab-cli and vLab automation work against labgate unchanged. Mounted only when [compat] vlab_enabled = true (see
docs/compat.md); otherwise these paths do not exist (404) and nothing here runs.

Every answer but the health check is the original envelope {"error": str|null, "content": {...}, "params":
{query args}}, with the original's status codes (200 for every success, 400 bad input, 401 bad token, 404 no such
record) plus 409 for a taken/exhausted port. Parameters come as the original took them: the query string for GET,
a JSON body for POST and DELETE. The domain work is labgate.core.compat over ForwardService."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from typing import Any, Awaitable, Callable, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from labgate.core.compat import PortmapQuery, TokenVerifier, VlabError, VlabService, from_labgate, no_quota
from labgate.core.errors import LabgateError
from labgate.service import Labgate
from labgate.core.tokens import Principal

log = logging.getLogger("labgate.api.compat")

PORTMAP = "/api/1/ipam/portmap"
ADDR = "/api/1/ipam/addr"
HEALTH = "/api/1/ipam/healthcheck"
QUOTA = "/api/1/quota"
TAG = "vlab-compat"
PORT_TEXT = re.compile(r"\d{1,5}")
# Longest values a stored forward can hold (as /api/v1's schema); longer input is refused before any parsing.
MAX_LEN = {"target_addr": 64, "target_name": 63, "target_component": 32}

Handler = Callable[[Request, Principal, dict[str, str]], Awaitable[tuple[int, dict[str, Any]]]]


# --- what /openapi.json says of these calls ----------------------------------------------------------------------
# Documentation only: the handlers read the request themselves (as the original did: auth before input, its
# messages, extra keys ignored) and answer JSONResponse, so nothing below changes an answer.

# The vLab token in X-Auth (no "Bearer"). auto_error=False: a missing one is the handler's 401, in the envelope.
VLAB_TOKEN = APIKeyHeader(name="X-Auth", scheme_name="vLabToken", auto_error=False,
                          description="a vLab JWT (vlab-auth-service), as vlab-cli sends it")


class VlabNothing(BaseModel):
    """{}"""

    model_config = ConfigDict(extra="forbid")


class VlabFailed(BaseModel):
    """Any refusal: `error` says why, `content` is {}."""

    error: str = Field(min_length=1)
    content: VlabNothing
    params: dict[str, str] = Field(description="the query string: the first value of each key")


class VlabPort(BaseModel):
    name: str
    target_addr: str
    target_port: int
    component: str


class VlabPorts(BaseModel):
    ports: dict[str, VlabPort] = Field(description="conn_port (the gateway's port, as text) -> its target")
    gateway_ip: str = Field(description="the compat gateway's external address")


class VlabConnPort(BaseModel):
    conn_port: int = Field(description="the gateway's port now forwarding to the target")


class VlabMachine(BaseModel):
    component: str
    routable: bool | None = Field(description="every address up: true; one down: false; not known yet: null")
    addr: list[str]


class VlabQuota(BaseModel):
    exceeded_on: int
    last_notified: int
    grace_period: int
    soft_limit: int = Field(alias="soft-limit")


class VlabOk(BaseModel):
    error: None
    params: dict[str, str] = Field(description="the query string: the first value of each key")


class VlabPortsOk(VlabOk):
    content: VlabPorts


class VlabConnPortOk(VlabOk):
    content: VlabConnPort


class VlabDeletedOk(VlabOk):
    content: VlabNothing


class VlabMachinesOk(VlabOk):
    content: dict[str, VlabMachine] = Field(description="machine name -> its kind, reachability and addresses")


class VlabQuotaOk(VlabOk):
    content: VlabQuota


class VlabHealth(BaseModel):
    status: Literal["ok", "degraded"]


def _answers(ok: type[BaseModel], description: str, *failures: int) -> dict[int | str, dict[str, Any]]:
    """The documented answers: 200 with `ok`, and `failures` and 429 in the envelope. (The API's front door,
    middleware.Guard, answers that 429 after too many refused tokens from one address, and a 413 in labgate's own
    error shape, which middleware.document_guard_errors adds.)"""
    why = {400: "bad input (its schema, a port that is not a number, labgate's own validation)",
           401: "no token, or an invalid or expired one", 404: "No such port mapping record",
           409: "no free port, or the owner's quota is used up",
           429: "too many refused tokens from this address; Retry-After says when to retry",
           500: "the kernel refused the change, or the service failed (nothing was changed)"}
    return {200: {"model": ok, "description": description},
            **{s: {"model": VlabFailed, "description": why[s]} for s in (*failures, 429)}}


_EMPTY = {"type": "string", "maxLength": 0}


def _query(*names: str, ports: tuple[str, ...] = (), address: str | None = None) -> list[dict[str, Any]]:
    out = [{"name": n, "in": "query", "required": False, "schema": {"type": "string"},
            "description": "exact match; empty: no filter"} for n in names]
    if address is not None:
        out.append({"name": address, "in": "query", "required": False,
                    "schema": {"anyOf": [{"type": "string", "format": "ipv4"}, _EMPTY]},
                    "description": "an IPv4 address, exact match; empty: no filter"})
    out += [{"name": n, "in": "query", "required": False,
             "schema": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535}, _EMPTY]},
             "description": "0 or empty: no filter"} for n in ports]
    return out


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_STRING = {"type": "string"}
PORT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 65535}
CREATE_BODY = {"type": "object", "required": ["target_addr", "target_port", "target_name", "target_component"],
               "properties": {"target_addr": {**_STRING, "maxLength": MAX_LEN["target_addr"]},
                              "target_port": PORT_SCHEMA,
                              "target_name": {**_STRING, "maxLength": MAX_LEN["target_name"]},
                              "target_component": {**_STRING, "maxLength": MAX_LEN["target_component"]}},
               "description": "other keys are ignored, as the original's schema did"}
DELETE_BODY = {"type": "object", "required": ["conn_port"],
               "properties": {"conn_port": {"anyOf": [PORT_SCHEMA, {**_STRING, "pattern": "^[0-9]{1,5}$"}],
                                            "description": "an integer; numeric text too (old vlab-cli sent it)"}},
               "description": "other keys are ignored"}


def query_args(request: Request) -> dict[str, str]:
    """The query string as the original echoed it in "params" (first value of each key)."""
    qp = request.query_params
    return {k: qp.getlist(k)[0] for k in qp.keys()}


def envelope(status: int, error: str | None, content: dict[str, Any], params: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": error, "content": content, "params": params}, status_code=status)


def _opt(args: dict[str, str], key: str) -> str | None:
    """A string filter; absent or empty means no filter (the original tested truthiness)."""
    return args.get(key) or None


def _port_arg(args: dict[str, str], key: str) -> int | None:
    """A port filter from the query string; absent or 0 means no filter, as in the original."""
    text = args.get(key)
    if text is None or text == "":
        return None
    if not PORT_TEXT.fullmatch(text) or int(text) > 65535:
        raise VlabError(400, f"Param {key} must be a number 0-65535, supplied: {text[:64]}")
    return int(text) or None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise VlabError(400, "No JSON content body sent in HTTP request")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise VlabError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise VlabError(400, "Input does not match schema: the body must be a JSON object")
    return body


def _schema_error(reason: str) -> VlabError:
    return VlabError(400, f"Input does not match schema: {reason}")


def _required_str(body: dict[str, Any], key: str) -> str:
    if key not in body:
        raise _schema_error(f"'{key}' is a required property")
    value = body[key]
    if not isinstance(value, str):
        raise _schema_error(f"'{key}' must be a string")
    if len(value) > MAX_LEN[key]:
        raise VlabError(400, f"{key} is longer than {MAX_LEN[key]} characters")
    return value


def _required_int(body: dict[str, Any], key: str, *, numeric_text: bool = False) -> int:
    """An integer field (true/false are not integers). With numeric_text, "50001" is accepted too: old vlab-cli
    releases sent the conn_port key of the GET answer, a string, back in DELETE."""
    if key not in body:
        raise _schema_error(f"'{key}' is a required property")
    value = body[key]
    if numeric_text and isinstance(value, str) and PORT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _schema_error(f"'{key}' must be an integer")
    if not 1 <= value <= 65535:
        raise VlabError(400, f"{key} must be 1-65535")
    return value


def build_router(lg: Labgate) -> APIRouter:
    """The compat routes for service `lg`; raises ValueError when [compat] is not enabled and complete."""
    verifier = TokenVerifier(lg.settings.compat)
    vlab = VlabService(lg.forwards, lg.settings.compat_gateway)
    router = APIRouter(tags=[TAG])
    authenticated = {"dependencies": [Depends(VLAB_TOKEN)]}

    async def serve(request: Request, handler: Handler) -> JSONResponse:
        """Authenticate (before looking at the input, as the original did), run, answer in the envelope."""
        args = query_args(request)
        try:
            who = verifier.verify(request.headers.get("X-Auth"), request.client.host if request.client else None)
            request.state.owner = who.owner
            status, content = await handler(request, who, args)
        except VlabError as exc:
            return envelope(exc.status, exc.message, {}, args)
        except LabgateError as exc:
            err = from_labgate(exc)
            if err.status >= 500:
                log.error("event=vlab_request_failed status=%d message=%r", err.status, err.message)
            return envelope(err.status, err.message, {}, args)
        except Exception:
            log.exception("event=vlab_unhandled_error")
            return envelope(500, "internal error; the change was not applied (see the server log)", {}, args)
        return envelope(status, None, content, args)

    # --- GET/POST/DELETE /api/1/ipam/portmap ---------------------------------------------------------------------
    async def _list(_request: Request, who: Principal, args: dict[str, str]) -> tuple[int, dict[str, Any]]:
        q = PortmapQuery(name=_opt(args, "name"), target_addr=_opt(args, "target_addr"),
                         component=_opt(args, "component"), conn_port=_port_arg(args, "conn_port"),
                         target_port=_port_arg(args, "target_port"))
        return 200, await run_in_threadpool(vlab.list_ports, who, q)

    async def _create(request: Request, who: Principal, _args: dict[str, str]) -> tuple[int, dict[str, Any]]:
        body = await _json_body(request)
        addr = _required_str(body, "target_addr")
        port = _required_int(body, "target_port")
        name = _required_str(body, "target_name")
        component = _required_str(body, "target_component")
        return 200, await run_in_threadpool(vlab.create, who, addr, port, name, component)

    async def _delete(request: Request, who: Principal, _args: dict[str, str]) -> tuple[int, dict[str, Any]]:
        body = await _json_body(request)
        conn_port = _required_int(body, "conn_port", numeric_text=True)
        await run_in_threadpool(vlab.delete, who, conn_port)
        return 200, {}

    @router.get(PORTMAP, summary="vLab: list port maps (filters name, target_addr, component, conn_port, "
                                 "target_port, AND-ed)", **authenticated,
                responses=_answers(VlabPortsOk, "the caller's port maps", 400, 401, 500),
                openapi_extra={"parameters": _query("name", "target_addr", "component",
                                                    ports=("conn_port", "target_port"))})
    async def get_portmap(request: Request) -> JSONResponse:
        return await serve(request, _list)

    @router.post(PORTMAP, summary="vLab: create a port map; body target_addr, target_port, target_name, "
                                  "target_component; answers {conn_port}", **authenticated,
                 responses=_answers(VlabConnPortOk, "forwarding: a new forward", 400, 401, 409, 500),
                 openapi_extra=_body(CREATE_BODY))
    async def post_portmap(request: Request) -> JSONResponse:
        return await serve(request, _create)

    @router.delete(PORTMAP, summary="vLab: delete a port map; body conn_port", **authenticated,
                   responses=_answers(VlabDeletedOk, "no longer forwarded", 400, 401, 404, 500),
                   openapi_extra=_body(DELETE_BODY))
    async def delete_portmap(request: Request) -> JSONResponse:
        return await serve(request, _delete)

    # --- GET /api/1/ipam/addr ----------------------------------------------------------------------------------
    async def _addr(_request: Request, who: Principal, args: dict[str, str]) -> tuple[int, dict[str, Any]]:
        name, addr, component = _opt(args, "name"), _opt(args, "addr"), _opt(args, "component")
        if sum(v is not None for v in (name, addr, component)) > 1:
            raise VlabError(400, "Params are mutually exclusive. Supplied: name={}, addr={}, component={}".format(
                *(v[:64] if v is not None else None for v in (name, addr, component))))
        if addr is not None and not _is_ipv4(addr):
            raise VlabError(400, f"Param addr must be an IPv4 address, supplied: {addr[:64]}")
        return 200, await run_in_threadpool(vlab.lookup_addr, who, name=name, addr=addr, component=component)

    @router.get(ADDR, summary="vLab: addresses of your machines (at most one of name, addr, component)",
                **authenticated, responses=_answers(VlabMachinesOk, "the caller's machines", 400, 401, 500),
                openapi_extra={"parameters": _query("name", "component", address="addr")})
    async def get_addr(request: Request) -> JSONResponse:
        return await serve(request, _addr)

    # --- GET /api/1/quota ------------------------------------------------------------------------------------
    async def _quota(_request: Request, _who: Principal, _args: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return 200, no_quota()

    @router.get(QUOTA, summary="vLab: VM quota for `vlab status`; labgate enforces none (soft-limit 2147483647, "
                               "never exceeded)", **authenticated,
                responses=_answers(VlabQuotaOk, "no quota: the same answer for everyone", 401, 500))
    async def get_quota(request: Request) -> JSONResponse:
        # Authenticated like every other vLab call (the original required a token too): 401 in the envelope.
        return await serve(request, _quota)

    # --- GET /api/1/ipam/healthcheck ---------------------------------------------------------------------------
    @router.get(HEALTH, summary="vLab: liveness only (no authentication, no data)", response_model=VlabHealth)
    def healthcheck() -> dict:
        # The original dumped its whole table and the firewall rules here, unauthenticated. This says only
        # whether labgate is up, exactly like /healthz.
        healthy = lg.db.problem is None and all(gw.health().status in ("ok", "off")
                                                for gw in lg.dataplane.gateways.values())
        return {"status": "ok" if healthy else "degraded"}

    return router


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def mount(app: FastAPI, lg: Labgate) -> None:
    """Serve the vLab compatibility API on `app` when [compat] vlab_enabled is true; otherwise do nothing, so
    /api/1/ipam/* answers 404 like any unknown path and no token of any kind is accepted there."""
    if lg.settings.compat.vlab_enabled:
        app.include_router(build_router(lg))
        log.info("event=vlab_compat_enabled gateway=%s issuer=%s algorithm=%s", lg.settings.compat_gateway.name,
                 lg.settings.compat.jwt_issuer, lg.settings.compat.jwt_algorithm)
