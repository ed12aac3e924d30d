"""The sync path on the in-memory kernel: partial or full, what a refusal leaves, drift repair, a failed commit put
back, the forwarding check. No root: the kernel tests prove the same against real nftables."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from prometheus_client import REGISTRY

from labgate.config import GatewayConfig
from labgate.dataplane.fake import FakeKernel
from labgate.dataplane.reconcile import ChangeRefused, Dataplane, DataplaneError, RuleChange
from labgate.dataplane.render import ForwardRule

EXT = "198.51.100.1"
SENTINEL_KEY = "0.0.0.0 . tcp . 0"  # render.SENTINELS: in every full render, never a forward


class Rules:
    """A RulesSource standing for the committed database: id -> rule."""

    def __init__(self) -> None:
        self.committed: dict[int, tuple[int, str, int]] = {}
        self.broken = False

    def rule(self, i: int, external: ipaddress.IPv4Address) -> ForwardRule:
        port, target, tport = self.committed[i]
        return ForwardRule(i, "tcp", external, port, ipaddress.IPv4Address(target), tport)

    def enabled_rules(self, gateway: str, external: ipaddress.IPv4Address) -> list[ForwardRule]:
        if self.broken:
            raise RuntimeError("database is locked")
        return [self.rule(i, external) for i in sorted(self.committed)]


def rule(i: int, port: int, target: str = "10.9.0.5", tport: int = 22) -> ForwardRule:
    return ForwardRule(i, "tcp", ipaddress.IPv4Address(EXT), port, ipaddress.IPv4Address(target), tport)


@pytest.fixture
def plane():
    rules = Rules()
    kernels: dict[str, FakeKernel] = {}

    def make(cfg: GatewayConfig) -> FakeKernel:
        kernels[cfg.name] = FakeKernel(addresses=[EXT, "10.9.0.1"], preferred=EXT)
        return kernels[cfg.name]

    cfg = GatewayConfig(name="lab", netns="lab1", external_address=EXT, port_range=["4000-4100"],
                        target_networks=["10.9.0.0/24"])
    dp = Dataplane([cfg], rules, kernels=make, interval=3600, full_interval=None)
    yield dp, dp.gateways["lab"], kernels["lab"], rules
    dp.stop()


def ids_in_kernel(kernel: FakeKernel) -> dict[str, str | None]:
    return {k: v for k, v in kernel.elements("labgate_lab", "ids").items() if k != SENTINEL_KEY}


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_first_sync_is_full_and_later_changes_are_partial(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    assert dp.reconcile_once() is True
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"}
    assert gw.health().status == "ok" and gw.forwards_in_kernel == 1
    full_batches = len(kernel.batches)
    with dp.change("lab") as g:
        assert g.sync(RuleChange.of(add=[rule(2, 4001)])) == "partial"
    assert len(kernel.batches) == full_batches + 1
    batch = kernel.batches[-1]
    assert "add element ip labgate_lab ids" in batch and "table ip labgate_lab {" not in batch
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1", f"{EXT} . tcp . 4001": "2"}
    assert gw.forwards_in_kernel == 2
    assert metric("labgate_last_sync_timestamp_seconds", gateway="lab") > 0


def test_a_partial_sync_refused_because_of_drift_is_repaired_and_the_change_lands(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    rules.committed[2] = (4001, "10.9.0.5", 22)
    dp.reconcile_once()
    # Someone deleted forward 2's element by hand: deleting it again is refused (nft: no such element).
    kernel.apply(f"delete element ip labgate_lab ids {{ {EXT} . tcp . 4001 }}")
    with dp.change("lab") as g:
        assert g.sync(RuleChange.of(remove=[rule(2, 4001)])) == "partial"
        del rules.committed[2]  # the commit
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"}
    assert "table ip labgate_lab {" in kernel.batches[-2]  # the full re-sync from the committed state came first
    assert not gw.needs_full and gw.health().status == "ok"


def test_a_change_the_kernel_refuses_is_refused_alone_and_the_gateway_keeps_working(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    kernel.refuse_matching(f"{EXT} . tcp . 4007")  # whatever batch carries this forward's element
    with pytest.raises(ChangeRefused, match="injected"):
        with dp.change("lab") as g:
            g.sync(RuleChange.of(add=[rule(7, 4007)]))
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"}
    assert not gw.needs_full and gw.health().status == "ok" and gw.last_error is None
    # The next change is partial again: nobody else pays for the refused one.
    with dp.change("lab") as g:
        assert g.sync(RuleChange.of(add=[rule(8, 4008)])) == "partial"


def test_a_refusal_changes_nothing_marks_the_gateway_and_is_recorded_once(plane, caplog):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    before = kernel.dump()
    failures = metric("labgate_sync_failures_total", gateway="lab", kind="full") or 0
    kernel.refuse_next(3)  # partial, full, and the full sync's fallback
    with caplog.at_level(logging.DEBUG, logger="labgate.dataplane"):
        with pytest.raises(DataplaneError, match="injected"):
            with dp.change("lab") as g:
                g.sync(RuleChange.of(add=[rule(2, 4001)]))
    assert kernel.dump() == before
    assert gw.needs_full and gw.health().status == "error" and "injected" in gw.health().last_error
    assert metric("labgate_sync_failures_total", gateway="lab", kind="full") == failures + 1
    assert [r for r in caplog.records if "event=sync_failed" in r.getMessage()]
    # The refused batch is in the debug log, for whoever has to find out why.
    assert any("event=sync_refused_batch" in r.getMessage() and "labgate_lab" in r.getMessage()
               for r in caplog.records)
    # The next change on a dirty gateway is a full sync that lands the pending change and the repair together.
    with dp.change("lab") as g:
        assert g.sync(RuleChange.of(add=[rule(2, 4001)]), desired=lambda ext: [rule(1, 4000), rule(2, 4001)]) \
            == "full"
    assert set(ids_in_kernel(kernel)) == {f"{EXT} . tcp . 4000", f"{EXT} . tcp . 4001"}
    assert gw.health().status == "ok"


def test_a_commit_that_fails_after_the_sync_is_put_back_to_the_committed_state(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    with pytest.raises(RuntimeError, match="commit failed"):
        with dp.change("lab") as g:
            g.sync(RuleChange.of(add=[rule(2, 4001)]))
            assert f"{EXT} . tcp . 4001" in ids_in_kernel(kernel)
            raise RuntimeError("commit failed")
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"}
    assert not gw.needs_full


def test_a_block_that_fails_before_syncing_leaves_the_kernel_alone(plane):
    dp, gw, kernel, rules = plane
    dp.reconcile_once()
    count = len(kernel.batches)
    with pytest.raises(ValueError):
        with dp.change("lab"):
            raise ValueError("invalid input")
    assert len(kernel.batches) == count and not gw.needs_full


def test_drift_is_found_and_repaired(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    repairs = metric("labgate_drift_repairs_total", gateway="lab") or 0
    del kernel.tables["labgate_lab"]          # someone deleted the table
    assert gw.check_tables() == (False, True)
    assert dp.reconcile_once() is True
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"}
    assert metric("labgate_drift_repairs_total", gateway="lab") == repairs + 1
    kernel.tables["labgate_lab"].chains["prerouting"].clear()  # someone flushed a chain
    dp.reconcile_once()
    assert kernel.table_shape("labgate_lab")["prerouting"] == 1


def test_a_missing_namespace_or_database_is_an_error_until_it_is_back(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    kernel.gone()
    assert dp.reconcile_once() is False
    assert gw.health().status == "error" and "does not exist" in gw.last_error
    kernel.gone(present=True)  # re-created, empty: as an L3 agent rebuilds a namespace
    rules.broken = True
    assert dp.reconcile_once() is False and "loading forwards: database is locked" in gw.last_error
    rules.broken = False
    assert dp.reconcile_once() is True
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"} and gw.last_error is None


def test_usage_counters_survive_a_full_sync_and_go_with_their_forward(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    kernel.count("labgate_lab_usage", "conns", 1, 3, 0)
    kernel.count("labgate_lab_usage", "traffic", 1, 20, 2000)
    assert gw.read_usage() == {1: (3, 20, 2000)}
    dp.request_full_sync("lab")
    dp.reconcile_once()
    assert gw.read_usage() == {1: (3, 20, 2000)}
    with dp.change("lab") as g:
        g.sync(RuleChange.of(remove=[rule(1, 4000)]))
    assert gw.read_usage() == {}


def test_forwarding_is_turned_on_where_allowed_and_reported_where_not(plane):
    dp, gw, kernel, rules = plane
    kernel.forwarding = False
    dp.reconcile_once()
    assert kernel.forwarding is True and gw.health().status == "ok"  # a named namespace: labgate's to manage
    gw.cfg = gw.cfg.model_copy(update={"enable_forwarding": False})
    kernel.forwarding = False
    dp.reconcile_once()
    assert gw.health().status == "not_forwarding"
    [problem] = gw.health().problems
    assert "ip netns exec lab1 sysctl -w net.ipv4.ip_forward=1" in problem.fix
    assert metric("labgate_gateway_forwarding", gateway="lab") == 0
    kernel.forwarding = True
    dp.reconcile_once()
    assert gw.health().status == "ok" and gw.health().problems == ()


def test_the_fake_refuses_what_nft_refuses():
    kernel = FakeKernel()
    kernel.apply("add table ip t\nadd map ip t m { type mark : mark; }\nadd element ip t m { 1 : 2 }\n")
    before = kernel.dump()
    for batch in ("add element ip t m { 1 : 3 }",            # an existing key with other data
                  "delete element ip t m { 9 }",             # a missing element
                  "delete table ip nope",                    # a missing table
                  "add element ip t m { 5 : 6 }\nbogus line"):  # all or nothing
        with pytest.raises(Exception):
            kernel.apply(batch)
        assert kernel.dump() == before
    kernel.apply("add element ip t m { 1 : 2, 5 : 6 }")  # the same data again is fine
    assert kernel.elements("t", "m") == {"1": "2", "5": "6"}


def test_sessions_a_lost_cut_left_running_are_cut_after_the_next_full_sync(plane):
    """The process died after a delete/retarget committed and before its sessions were cut: the next full sync
    (at start, or after any failure) cuts every connection the committed state no longer explains, and only
    those."""
    from labgate.dataplane.conntrack import Connection

    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)   # kept as it was
    rules.committed[2] = (4001, "10.9.0.7", 22)   # retargeted to .7 (its old sessions still go to .6)
    ok = Connection("tcp", "203.0.113.9", 50001, EXT, 4000, "10.9.0.5", 22, 1)
    retargeted = Connection("tcp", "203.0.113.9", 50002, EXT, 4001, "10.9.0.6", 22, 2)
    deleted = Connection("tcp", "203.0.113.9", 50003, EXT, 4002, "10.9.0.5", 22, 3)    # forward 3 is gone
    foreign = Connection("tcp", "203.0.113.9", 50004, "192.0.2.99", 80, "10.9.0.5", 80, 3)  # not ours: other dst
    other_port = Connection("tcp", "203.0.113.9", 50005, EXT, 9999, "10.9.0.5", 22, 77)   # outside our ranges
    kernel.conns = [ok, retargeted, deleted, foreign, other_port]
    assert dp.reconcile_once() is True
    assert kernel.conns == [ok, foreign, other_port]
    kernel.conns.append(deleted)
    assert dp.reconcile_once() is True and deleted in kernel.conns  # a clean pass lists nothing (no full sync)
    dp.request_full_sync("lab")
    dp.reconcile_once()
    assert deleted not in kernel.conns


def test_a_flushed_map_is_found_by_the_cheap_check(plane):
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4000, "10.9.0.5", 22)
    dp.reconcile_once()
    kernel.apply("delete element ip labgate_lab ids "
                 f"{{ {EXT} . tcp . 4000, {SENTINEL_KEY} }}")  # what `nft flush map` leaves: nothing
    assert gw.check_tables() == (False, True)
    assert dp.reconcile_once() is True
    assert ids_in_kernel(kernel) == {f"{EXT} . tcp . 4000": "1"} and gw.check_tables() == (True, True)


def test_a_removed_gateway_is_left_alone_by_a_pass_that_still_holds_it(plane) -> None:
    """The reconcile loop walks the gateways it read before the monitor removed one: that gateway's table, just
    dropped, must not come back, and the pass must not fail on its closed kernel."""
    dp, gw, kernel, rules = plane
    rules.committed[1] = (4001, "10.9.0.5", 22)
    assert dp.reconcile_gateway(gw)
    dp.remove_gateway("lab")
    assert "labgate_lab" not in kernel.tables
    assert dp.reconcile_gateway(gw)  # a pass holding the old dict
    assert "labgate_lab" not in kernel.tables
    with pytest.raises(DataplaneError, match="removed"):
        with dp.change("lab"):
            pass
