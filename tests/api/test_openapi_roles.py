"""OpenAPI (issue 11, item 9): every operation that needs a token documents 401 and 403 (roles apply to all of
them), in the API's error shape; /healthz documents neither."""

from __future__ import annotations

from tests.api.conftest import Api


def test_every_authenticated_operation_lists_401_and_403(api: Api) -> None:
    schema = api.anon.get("/openapi.json").json()
    checked = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if path == "/healthz":
                assert "403" not in op["responses"]
                continue
            for status in ("401", "403"):
                assert status in op["responses"], (method, path, sorted(op["responses"]))
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, ref)
            checked.append(f"{method.upper()} {path}")
    for expected in ("GET /api/v1/forwards", "POST /api/v1/forwards", "PATCH /api/v1/forwards/{forward_id}",
                     "DELETE /api/v1/forwards/{forward_id}", "GET /api/v1/machines", "GET /api/v1/gateways",
                     "GET /api/v1/events", "GET /metrics", "GET /api/v1/tokens", "POST /api/v1/tokens",
                     "DELETE /api/v1/tokens/{token_id}", "GET /api/v1/audit"):
        assert expected in checked


def test_body_integers_stay_integers_in_the_schema(api: Api) -> None:
    schema = api.anon.get("/openapi.json").json()["components"]["schemas"]["ForwardCreate"]["properties"]
    assert schema["target_port"]["type"] == "integer"
    assert schema["external_port"]["anyOf"][0]["type"] == "integer"
