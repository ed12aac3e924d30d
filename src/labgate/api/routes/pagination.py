"""Limit/offset pages with next/previous links that keep the caller's filters.

The links are relative references (`/api/v1/forwards?limit=50&offset=50`), resolved by the client against the
URL it called: they never carry the request's Host header (which the caller chooses, so a link built from it can
point anywhere) and stay right behind a reverse proxy (its path prefix, the ASGI root_path, is kept)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request

Limit = Annotated[int, Query(ge=1, le=1000, description="page size (max 1000)")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="items to skip")]


def page(request: Request, total: int, results: list[Any], limit: int, offset: int) -> dict[str, Any]:
    path = request.scope.get("root_path", "") + request.url.path
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "offset")]

    def link(new_offset: int) -> str:
        return f"{path}?{urlencode(kept + [('limit', str(limit)), ('offset', str(new_offset))])}"

    return {
        "count": total,
        "next": link(offset + limit) if offset + limit < total else None,
        "previous": link(max(offset - limit, 0)) if offset > 0 else None,
        "results": results,
    }
