"""/api/v1/forwards: create, list, read, change and delete forwards (each caller sees only their own)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.convertors import StringConvertor, register_url_convertor

from labgate.api.deps import AUTH_ERRORS, LabgateDep, ReaderDep, WriterDep
from labgate.api.routes.pagination import Limit, Offset, page
from labgate.api.schemas import (
    BatchOut,
    ErrorOut,
    ForwardApply,
    ForwardBatch,
    ForwardCreate,
    ForwardOut,
    ForwardPage,
    ForwardPatch,
)
from labgate.core.batch import BatchOutcome, run_batch
from labgate.core.forwards import ForwardFilter, ForwardSpec

router = APIRouter(prefix="/api/v1/forwards", tags=["forwards"])


class ForwardIdConvertor(StringConvertor):
    """A forward's id in a path: any segment (a bad one is a 422 that says why) but the names of the collection's
    own POST endpoints, so that `PATCH /api/v1/forwards/batch` is a 405, not a forward id that is no integer."""

    regex = "(?!(?:batch|apply)$)[^/]+"


register_url_convertor("forward_id", ForwardIdConvertor())
ForwardId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the forward's id")]
ERRORS = {**AUTH_ERRORS, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
          503: {"model": ErrorOut}}
# A gateway whose kernel another process (its agent) programs: the change is committed, and not applied yet after
# `agent_wait` seconds (or the agent refused it): the forward says "pending" (or "failed") and why.
PENDING = {202: {"model": ForwardOut, "description": "committed; the gateway's agent has not applied it yet"}}
READ_ERRORS = {**AUTH_ERRORS, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


def _pending(view, response: Response):
    if view.status in ("pending", "failed"):
        response.status_code = status.HTTP_202_ACCEPTED
    return view


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ForwardOut, responses={**ERRORS, **PENDING})
def create_forward(body: ForwardCreate, lg: LabgateDep, who: WriterDep, response: Response) -> dict:
    """Forward an external port of the gateway (chosen for you unless `external_port` is given) to a target.
    When this returns 201 the kernel already forwards it; 202: committed, its gateway's agent (another process)
    has not applied it within `agent_wait` seconds (status `pending`, or `failed` with the kernel's reason)."""
    return _pending(lg.forwards.create(who, ForwardSpec(**body.model_dump())), response)


BATCH_PENDING = {202: {"model": BatchOut, "description": "committed; the gateway's agent has not applied it yet"},
                 413: {"model": ErrorOut, "description": "larger than [server] max_batch_body_bytes"}}


def _batch(outcome: BatchOutcome, response: Response, done: int) -> dict:
    pending = not outcome.applied or any(f.status in ("pending", "failed") for f in outcome.forwards)
    response.status_code = status.HTTP_202_ACCEPTED if pending else done
    return {"gateway": outcome.gateway, "status": "pending" if pending else "applied", "created": outcome.created,
            "updated": outcome.updated, "unchanged": outcome.unchanged, "deleted": outcome.deleted,
            "forwards": outcome.forwards}


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=BatchOut,
             responses={**ERRORS, **BATCH_PENDING})
def batch_forwards(body: ForwardBatch, lg: LabgateDep, who: WriterDep, response: Response) -> dict:
    """Create and delete many forwards of one gateway at once: one transaction and one kernel batch, all or
    nothing (an error names the item: `create[3].target_address`, `delete[0]`). 201 when the kernel has it all."""
    specs = [ForwardSpec(**item.model_dump()) for item in body.create]
    return _batch(run_batch(lg.forwards, who, specs, list(body.delete)), response, status.HTTP_201_CREATED)


@router.post("/apply", response_model=BatchOut, responses={**ERRORS, **BATCH_PENDING})
def apply_forwards(body: ForwardApply, lg: LabgateDep, who: WriterDep, response: Response) -> dict:
    """Make these forwards exist as described (each by name, target_port and protocol; on one gateway): create the
    missing, change those whose target or stated settings differ (cutting the sessions of a moved target; a
    setting an item leaves out is left as it is), leave the rest. One transaction and one kernel batch; safe to
    send again (nothing changes the second time)."""
    specs = [ForwardSpec(**item.model_dump()) for item in body.forwards]
    given = [set(item.model_fields_set) for item in body.forwards]
    return _batch(run_batch(lg.forwards, who, specs, [], ensure=True, given=given), response, status.HTTP_200_OK)


@router.get("", response_model=ForwardPage, responses=READ_ERRORS)
def list_forwards(
    request: Request,
    lg: LabgateDep,
    who: ReaderDep,
    name: Annotated[str | None, Query(max_length=63)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    target_address: Annotated[str | None, Query(max_length=64)] = None,
    target_port: Annotated[int | None, Query(ge=1, le=65535)] = None,
    external_port: Annotated[int | None, Query(ge=1, le=65535)] = None,
    protocol: Literal["tcp", "udp"] | None = None,
    gateway: Annotated[str | None, Query(max_length=255)] = None,
    owner: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict:
    flt = ForwardFilter(name=name, kind=kind, target_address=target_address, target_port=target_port,
                        external_port=external_port, protocol=protocol, gateway=gateway, owner=owner)
    total, results = lg.forwards.list(who, flt, limit=limit, offset=offset)
    return page(request, total, results, limit, offset)


@router.get("/{forward_id:forward_id}", response_model=ForwardOut, responses=READ_ERRORS)
def get_forward(forward_id: ForwardId, lg: LabgateDep, who: ReaderDep) -> dict:
    return lg.forwards.get(who, forward_id)


@router.patch("/{forward_id:forward_id}", response_model=ForwardOut, responses={**ERRORS, **PENDING})
def update_forward(forward_id: ForwardId, body: ForwardPatch, lg: LabgateDep, who: WriterDep,
                   response: Response) -> dict:
    """Change description, enabled, allowed_sources, name, kind or the target; a retarget is one atomic kernel
    change and cuts the sessions still going to the old target. 202 as for a create."""
    return _pending(lg.forwards.update(who, forward_id, body.model_dump(exclude_unset=True)), response)


@router.delete("/{forward_id:forward_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={**ERRORS, 202: {"description": "deleted; the gateway's agent has not removed its rule yet"}})
def delete_forward(forward_id: ForwardId, lg: LabgateDep, who: WriterDep) -> Response:
    applied = lg.forwards.delete(who, forward_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT if applied else status.HTTP_202_ACCEPTED)
