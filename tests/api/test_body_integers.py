"""Integers in request bodies (issue 11, item 9): JSON has one number type and JSON Schema's "integer" includes
22.0, so an integral float is the integer; 22.5, true and "22" stay 422."""

from __future__ import annotations

import pytest

from tests.api.conftest import FORWARDS, Api, assert_error, db_rows


def test_integral_floats_are_integers_in_a_create(api: Api) -> None:
    resp = api.alice.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22.0, "external_port": 4010.0,
                                          "port_count": 2.0})
    assert resp.status_code == 201, resp.text
    fwd = resp.json()
    assert (fwd["target_port"], fwd["external_port"], fwd["port_count"]) == (22, 4010, 2)
    assert isinstance(fwd["target_port"], int)


def test_integral_floats_are_integers_in_a_patch(api: Api) -> None:
    fwd = api.create()
    resp = api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": 2222.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["target_port"] == 2222


@pytest.mark.parametrize("value", [22.5, True, False, "22", 1e300, -0.0, 65536.0])
@pytest.mark.parametrize("field", ["target_port", "external_port", "port_count"])
def test_anything_else_stays_invalid(api: Api, field: str, value: object) -> None:
    before = db_rows(api.url)
    body = {"target_address": "10.9.0.5", "target_port": 22, field: value}
    assert_error(api.alice.post(FORWARDS, json=body), 422, "invalid", field)
    assert db_rows(api.url) == before


def test_a_patch_with_a_fraction_is_invalid(api: Api) -> None:
    fwd = api.create()
    assert_error(api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": 22.5}), 422, "invalid",
                 "target_port")
    assert_error(api.alice.patch(f"{FORWARDS}/{fwd['id']}", json={"target_port": "23"}), 422, "invalid",
                 "target_port")
