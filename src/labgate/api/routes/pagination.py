"""Limit/offset pages with next/previous links that keep the caller's filters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request

Limit = Annotated[int, Query(ge=1, le=1000, description="page size (max 1000)")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="items to skip")]


def page(request: Request, total: int, results: list[Any], limit: int, offset: int) -> dict[str, Any]:
    def link(new_offset: int) -> str:
        return str(request.url.include_query_params(limit=limit, offset=new_offset))

    return {
        "count": total,
        "next": link(offset + limit) if offset + limit < total else None,
        "previous": link(max(offset - limit, 0)) if offset > 0 else None,
        "results": results,
    }
