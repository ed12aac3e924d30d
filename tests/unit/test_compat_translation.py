"""The pure parts of the vLab translation (labgate.core.compat): which status a labgate error becomes, what
"routable" says for a set of address states, the quota answer, which forwards vLab clients see, and which address
filters can match. tests/api/test_compat.py drives the same code end to end, as vlab-cli does; these tests pin each
rule on its own, including the cases the end-to-end tests cannot reach (every error class, every mix of states)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from labgate.core.compat import NO_LIMIT, VlabError, _in_view, _normal_address, from_labgate, no_quota, routable
from labgate.core.errors import (
    DataplaneUnavailable,
    Forbidden,
    InvalidInput,
    LabgateError,
    NotFound,
    PortTaken,
    RangeExhausted,
    Unauthorized,
)
from labgate.core.views import ForwardView, HealthView, UsageView


# --- labgate errors in the vLab envelope -----------------------------------------------------------------------
class Teapot(LabgateError):
    status = 418


class NotAnError(LabgateError):
    status = 302  # no error status at all: must not reach a vLab client as one


@pytest.mark.parametrize("error, status", [
    (InvalidInput("target_port: must be 1-65535"), 400),   # the original's schema check answered 400, not 422
    (PortTaken("external port 4000/tcp is taken", holder=7), 409),
    (RangeExhausted("no free block of 1 tcp port(s) left"), 409),
    (NotFound("forward 9 not found"), 404),
    (Unauthorized("token revoked"), 401),
    (DataplaneUnavailable("the kernel refused the change"), 500),  # vlab-cli's 503 retry path is broken
    (Forbidden("admins only"), 403),                       # no rule of its own: its status is kept
    (Teapot("odd but an error"), 418),
    (NotAnError("not an error status"), 500),
    (LabgateError("anything else"), 500),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_each_labgate_error_has_its_vlab_status_and_keeps_its_message(error: LabgateError, status: int) -> None:
    out = from_labgate(error)
    assert isinstance(out, VlabError)
    assert (out.status, out.message, str(out)) == (status, error.message, error.message)


# --- routable ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("states, expected", [
    ([], None),                          # no address known: nothing to say
    (["up"], True),
    (["up", "up"], True),
    (["down"], False),
    (["up", "down"], False),             # one bad address is enough (a bad record)
    (["down", "down"], False),
    (["unknown"], None),                 # not probed yet: as the original before its first ping
    (["up", "unknown"], None),           # not every address decided
    (["unknown", "down"], False),        # ... but a down one decides already
    (["unknown", "up", "down"], False),
])
def test_routable_from_the_states_of_a_machines_addresses(states: list[str], expected: bool | None) -> None:
    assert routable(states) is expected


# --- quota ---------------------------------------------------------------------------------------------------
def test_no_quota_is_never_exceeded_and_its_limit_is_a_32_bit_integer_no_count_reaches() -> None:
    quota = no_quota()
    assert quota == {"exceeded_on": 0, "last_notified": 0, "grace_period": 0, "soft-limit": 2**31 - 1}
    assert NO_LIMIT == 2**31 - 1
    # integers, not booleans or floats: vlab-cli compares and adds them
    assert all(type(v) is int for v in quota.values()), quota
    quota["soft-limit"] = 1                                    # a caller changing its copy ...
    assert no_quota()["soft-limit"] == NO_LIMIT                # ... changes nobody else's


# --- the vLab view -------------------------------------------------------------------------------------------
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
SHOWN = ForwardView(
    id=1, gateway="default", protocol="tcp", external_address="198.51.100.1", external_port=4000, port_count=1,
    target_address="10.9.0.5", target_port=22, name="centos1", kind="CentOS", owner="alice", description="",
    enabled=True, allowed_sources=[], status="active", created_at=NOW, updated_at=NOW,
    health=HealthView("unknown", "unknown", "unknown", None, None, None), usage=UsageView())


def test_an_enabled_single_port_tcp_forward_with_name_and_kind_is_in_the_view() -> None:
    assert _in_view(SHOWN)
    # what vLab clients never look at does not matter
    assert _in_view(dataclasses.replace(SHOWN, status="error", allowed_sources=["192.0.2.0/24"], description="x",
                                        external_address=None, target_port=3389))


@pytest.mark.parametrize("change", [
    {"protocol": "udp"},
    {"port_count": 2},
    {"enabled": False, "status": "disabled"},
    {"name": None},
    {"kind": None},
    {"name": None, "kind": None},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_shapes_a_vlab_client_cannot_hold_are_out_of_the_view(change: dict) -> None:
    assert not _in_view(dataclasses.replace(SHOWN, **change))


# --- address filters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, stored", [
    ("10.9.0.5", "10.9.0.5"),
    ("0.0.0.0", "0.0.0.0"),
    ("10.9.0.%", None),          # the original's LIKE wildcard: matches nothing here
    ("10.9.0", None),
    ("010.9.0.5", None),         # leading zeros: ambiguous (octal to some), never a stored form
    (" 10.9.0.5", None),
    ("::ffff:10.9.0.5", None),   # targets are IPv4
    ("2001:db8::1", None),
    ("", None),
])
def test_an_address_filter_matches_only_in_its_stored_form(text: str, stored: str | None) -> None:
    assert _normal_address(text) == stored
