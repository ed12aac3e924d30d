"""Token rules without a server (issue 11): what each role may do, --expires, allowed networks, Principal."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from labgate.core.errors import Forbidden, InvalidInput
from labgate.core.tokens import Principal, check_networks, parse_expiry

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("role, allowed", [
    ("admin", {"read", "write", "admin", "metrics", "metrics_detail"}),
    ("user", {"read", "write", "metrics"}),
    ("readonly", {"read", "metrics"}),
    ("metrics", {"metrics", "metrics_detail"}),
])
def test_what_each_role_may_do(role: str, allowed: set[str]) -> None:
    who = Principal("alice", role=role)
    for action in ("read", "write", "admin", "metrics", "metrics_detail"):
        assert who.may(action) == (action in allowed), (role, action)
        if action in allowed:
            assert who.require(action) is who
        else:
            with pytest.raises(Forbidden, match=role):
                who.require(action)
    assert who.admin == (role == "admin")


def test_principal_keeps_its_old_constructor() -> None:
    assert Principal(owner="a", admin=True).role == "admin"
    assert Principal("a", False, 3) == Principal("a", token_id=3, role="user")
    with pytest.raises(ValueError):
        Principal("a", admin=True, role="readonly")
    with pytest.raises(ValueError):
        Principal("a", role="root")


@pytest.mark.parametrize("text, expected", [
    ("30d", NOW + timedelta(days=30)),
    ("12h", NOW + timedelta(hours=12)),
    ("2w", NOW + timedelta(weeks=2)),
    ("2026-12-31", datetime(2027, 1, 1, tzinfo=timezone.utc)),  # valid through that day
    ("2026-06-01T10:00:00+02:00", datetime(2026, 6, 1, 8, 0, tzinfo=timezone.utc)),
    ("2026-06-01T10:00:00Z", datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)),
])
def test_expiry_forms(text: str, expected: datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["0d", "yesterday", "2026-04-30", "2026-05-01T11:59:59Z", "30x", "-1d", "",
                                  "999999w", "9999-12-31", "9999-12-31T23:59:59-01:00"])
def test_expiry_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text, NOW)


def test_networks() -> None:
    assert check_networks(None) is None and check_networks([]) is None
    assert check_networks(["10.1.2.3/8", "10.0.0.0/8", "2001:db8::5/64"]) == ["10.0.0.0/8", "2001:db8::/64"]
    for bad in (["10.0.0.0/33"], ["host.example"], [7]):
        with pytest.raises(InvalidInput):
            check_networks(bad)
    with pytest.raises(InvalidInput, match="at most"):
        check_networks([f"10.0.{i}.0/24" for i in range(65)])
