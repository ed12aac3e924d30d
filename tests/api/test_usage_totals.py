"""Usage totals from the kernel's counters (workers/usage.py) against the in-memory kernel and a real database:
only forwards that counted something are read out of the kernel, idle ones cost nothing, and a counter that starts
over (the usage table rebuilt) is still seen: totals never lose what was counted before it."""

from __future__ import annotations

from tests.api.conftest import Api

USAGE = "labgate_default_usage"


def usage(api: Api, fid: int) -> dict:
    resp = api.alice.get(f"/api/v1/forwards/{fid}")
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]


def set_counters(api: Api, fid: int, conns: int, packets: int, nbytes: int) -> None:
    """What the kernel's counters read now (not added to: they may start over)."""
    kernel = api.server.kernel()
    with kernel._lock:
        kernel._set(USAGE, "conns").counters[str(fid)] = (conns, 0)
        kernel._set(USAGE, "traffic").counters[str(fid)] = (packets, nbytes)


def test_idle_forwards_are_not_read_out_and_a_counter_that_starts_over_is_seen(api: Api) -> None:
    busy, idle = api.create(name="busy"), api.create(name="idle")
    gw = api.server.labgate.dataplane.gateways["default"]
    assert gw.read_usage(nonzero=True) == {}                 # nothing counted yet: nothing read out
    assert set(gw.read_usage()) == {busy["id"], idle["id"]}  # the full answer still has them all

    set_counters(api, busy["id"], 3, 30, 3000)
    assert gw.read_usage(nonzero=True) == {busy["id"]: (3, 30, 3000)}
    assert api.server.labgate.usage.collect_once() == 1
    assert usage(api, busy["id"])["connections"] == 3 and usage(api, busy["id"])["bytes"] == 3000
    assert usage(api, idle["id"])["connections"] == 0

    # The usage table is rebuilt: every counter reads zero. Not read out of the kernel, but the database
    # remembers a non-zero reading, so the zero is folded in ...
    set_counters(api, busy["id"], 0, 0, 0)
    assert gw.read_usage(nonzero=True) == {}
    api.server.labgate.usage.collect_once()
    assert usage(api, busy["id"])["connections"] == 3       # nothing lost, nothing added
    # ... and counting from there adds all of it (5 more, though 5 > the old reading of 3).
    set_counters(api, busy["id"], 5, 50, 5000)
    api.server.labgate.usage.collect_once()
    after = usage(api, busy["id"])
    assert (after["connections"], after["packets"], after["bytes"]) == (8, 80, 8000)
