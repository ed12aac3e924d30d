"""The OpenAPI description and the interactive docs are served."""

from __future__ import annotations

from tests.api.conftest import FORWARDS, Api


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
    assert {"target_address", "target_port", "port_count", "allowed_sources", "target_port_id", "target_server"} <= set(
        schemas["ForwardCreate"]["properties"])
    # The target is one of target_address, target_port_id and target_server (OpenStack): none of them is required
    # by the schema; a create with none is a 422 saying so.
    assert set(schemas["ForwardCreate"]["required"]) == {"target_port"}


def test_docs_page_is_served(api: Api) -> None:
    resp = api.anon.get("/docs")
    assert resp.status_code == 200
    assert "text/html" in resp.headers["content-type"]
    assert "swagger" in resp.text.lower() and "/openapi.json" in resp.text


def allows_null(schema: dict) -> bool:
    if schema.get("type") == "null" or "null" in (schema.get("type") or []):
        return True
    return any(allows_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def not_json_schema(node: object, where: str = "") -> list[str]:
    """Where a schema in `node` uses pydantic's constraint names (ge, le, gt, lt), which JSON Schema does not know:
    the bound is then not documented at all."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("properties", "$defs", "schemas"):  # names, not keywords
                for name, sub in (value.items() if isinstance(value, dict) else ()):
                    found += not_json_schema(sub, f"{where}/{key}/{name}")
                continue
            if key in ("ge", "le", "gt", "lt"):
                found.append(f"{where}/{key}")
            found += not_json_schema(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            found += not_json_schema(sub, f"{where}/{i}")
    return found


def test_the_schema_says_what_the_endpoints_accept(api: Api) -> None:
    """What /openapi.json says of the bodies is what the endpoints do: PATCH refuses null for enabled,
    allowed_sources, target_address and target_port (the schema used to list null for every field), and every
    bound is a JSON Schema minimum/maximum (the bounds of `Int | None` fields used to be published as "ge"/"le",
    i.e. not at all)."""
    spec = api.anon.get("/openapi.json").json()
    assert not_json_schema(spec) == []
    schemas = spec["components"]["schemas"]
    patch = schemas["ForwardPatch"]
    assert "required" not in patch and patch["additionalProperties"] is False
    nullable = {name for name, prop in patch["properties"].items() if allows_null(prop)}
    assert nullable == {"description", "name", "kind"}
    for name in ("enabled", "allowed_sources", "target_address", "target_port"):
        assert "default" not in patch["properties"][name], name  # absent means unchanged: no default value
    assert (patch["properties"]["target_port"]["minimum"], patch["properties"]["target_port"]["maximum"]) == \
        (1, 65535)

    def bounds(prop: dict) -> tuple[int, int]:
        [number] = [s for s in prop.get("anyOf", [prop]) if s.get("type") == "integer"]
        return number["minimum"], number["maximum"]

    create = schemas["ForwardCreate"]["properties"]
    assert bounds(create["external_port"]) == bounds(create["target_port"]) == (1, 65535)
    assert bounds(create["port_count"]) == (1, 1024)
    limits = schemas["LimitsIn"]["properties"]
    assert bounds(limits["forwards"]) == bounds(limits["ports"]) == (0, 10_000_000)
    # ...and the endpoint agrees, field by field: null is taken exactly where the schema lists it.
    fwd = api.create(name="vm1", kind="centos", description="x")
    for name in patch["properties"]:
        resp = api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={name: None})
        assert resp.status_code == (200 if name in nullable else 422), (name, resp.text)
    assert api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": 65535}).status_code == 200
    assert api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": 65536}).status_code == 422
