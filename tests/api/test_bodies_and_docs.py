"""What a newcomer's first requests meet: a JSON body sent with curl's form content type, a body that is not JSON,
and the interactive docs on a gateway with no Internet access."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import FORWARDS, Api, db_count


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain",
                                          "application/json; charset=utf-8"])
def test_a_json_body_is_read_as_json_whatever_the_content_type(api: Api, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"target_address": "10.9.0.5", "target_port": 22, "name": "centos1"}'
    resp = api.alice.post(FORWARDS, content=body, headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["target_address"] == "10.9.0.5" and resp.json()["name"] == "centos1"
    fid = resp.json()["id"]
    patched = api.alice.patch(f"{FORWARDS}/{fid}", content=b'{"description": "x"}', headers=headers)
    assert patched.status_code == 200 and patched.json()["description"] == "x"


def test_a_body_that_is_not_json_says_what_to_send(api: Api) -> None:
    resp = api.alice.post(FORWARDS, content=b"target_address=10.9.0.5&target_port=22",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 422
    message = resp.json()["error"]["message"]
    assert "not valid JSON" in message and "Content-Type: application/json" in message
    assert db_count(api.url) == 0


def test_docs_and_their_assets_are_served_by_labgate_itself(api: Api) -> None:
    for page in ("/docs", "/redoc"):
        html = api.anon.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html.text)
        refs += re.findall(r"(?:url|openapi_url)\s*:\s*['\"]([^'\"]+)['\"]", html.text)
        assert refs, html.text
        for ref in refs:
            # Nothing is loaded from another host: every asset comes from this server and is really there.
            assert not re.match(r"^(https?:)?//", ref), f"{page} loads {ref} from the network"
            asset = api.anon.get(ref)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 100, ref
        scripts = [r for r in refs if r.endswith(".js")]
        assert scripts, refs
