"""The OpenAPI description and the interactive docs are served."""

from __future__ import annotations

from tests.api.conftest import Api


def test_openapi_json_lists_the_api(api: Api) -> None:
    resp = api.anon.get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "labgate"
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/forwards"])
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/forwards/{forward_id}"])
    assert "get" in paths["/api/v1/machines"] and "get" in paths["/api/v1/gateways"]
    assert "/healthz" in paths
    # the create body is documented with its fields
    schemas = spec["components"]["schemas"]
    assert {"target_address", "target_port", "port_count", "allowed_sources"} <= set(
        schemas["ForwardCreate"]["properties"])
    assert set(schemas["ForwardCreate"]["required"]) == {"target_address", "target_port"}


def test_docs_page_is_served(api: Api) -> None:
    resp = api.anon.get("/docs")
    assert resp.status_code == 200
    assert "text/html" in resp.headers["content-type"]
    assert "swagger" in resp.text.lower() and "/openapi.json" in resp.text
