"""nfnetlink.table_shape without a kernel: a stand-in netlink socket answers the three requests (table, chain dump,
rule dump) the way nf_tables does, including a ruleset that changes between them (asked again) and a missing table.
The real kernel, compared with nft's own listing, is in tests/kernel/test_drift_netlink.py."""

from __future__ import annotations

import errno
import struct

import pytest

from labgate.dataplane import nfnetlink as nl


def attr(kind: int, text: str) -> bytes:
    return nl._attr(kind, text.encode() + b"\0")


def message(msg_type: int, seq: int, generation: int, body: bytes, flags: int = nl.NLM_F_MULTI) -> bytes:
    payload = struct.pack("=BBH", nl.NFPROTO_IPV4, 0, struct.unpack("=H", struct.pack("!H", generation))[0]) + body
    return struct.pack("=IHHII", 16 + len(payload), nl.NFNL_SUBSYS_NFTABLES << 8 | msg_type, flags, seq, 0) + payload


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, 0, 0)


def ack(seq: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 36, nl.NLMSG_ERROR, 0, seq, 0, -code) + b"\0" * 16


class FakeKernel:
    """Answers GETTABLE / GETCHAIN dump / GETRULE dump from `tables` ({table: {chain: rules}}), each answer stamped
    with the generation `generations` hands out next (one per request)."""

    def __init__(self, tables: dict[str, dict[str, int]], generations: list[int]):
        self.tables, self.generations = tables, list(generations)
        self.requests: list[tuple[int, bytes]] = []
        self.pending: list[bytes] = []

    def __call__(self, timeout: float) -> "FakeKernel":
        return self

    def __enter__(self) -> "FakeKernel":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def send(self, data: bytes) -> int:
        _length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        msg_type, body = kind & 0xFF, data[20:]
        self.requests.append((msg_type, body))
        strings = nl._string_attrs(body, 0, len(body), (1, 2, 3))
        gen = self.generations.pop(0) if len(self.generations) > 1 else self.generations[0]
        if msg_type == nl.NFT_MSG_GETTABLE:
            name = strings[nl.NFTA_TABLE_NAME]
            self.pending.append(message(0, seq, gen, attr(nl.NFTA_TABLE_NAME, name), 0) + ack(seq)
                                if name in self.tables else ack(seq, errno.ENOENT))
        elif msg_type == nl.NFT_MSG_GETCHAIN:  # every table's chains: the kernel filters by family only
            parts = [message(nl.NFT_MSG_NEWCHAIN, seq, gen, attr(nl.NFTA_CHAIN_TABLE, table)
                             + attr(nl.NFTA_CHAIN_NAME, chain))
                     for table, chains in self.tables.items() for chain in chains]
            self.pending.append(b"".join(parts) + done(seq))
        elif msg_type == nl.NFT_MSG_GETRULE:  # filtered by NFTA_RULE_TABLE, as the kernel does
            table = strings[nl.NFTA_RULE_TABLE]
            parts = [message(nl.NFT_MSG_NEWRULE, seq, gen, attr(nl.NFTA_RULE_TABLE, table)
                             + attr(nl.NFTA_RULE_CHAIN, chain))
                     for chain, rules in self.tables.get(table, {}).items() for _ in range(rules)]
            # in two parts, as a long dump comes
            self.pending += [b"".join(parts[:1]), b"".join(parts[1:]) + done(seq)]
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)


TABLES = {"labgate_lab": {"prerouting": 1, "forward": 1, "postrouting": 0, "extra": 3},
          "other": {"prerouting": 5}}


def test_chains_and_rules_of_one_table_are_counted(monkeypatch):
    kernel = FakeKernel(TABLES, [9])
    monkeypatch.setattr(nl, "open_socket", kernel)
    assert nl.table_shape("labgate_lab") == TABLES["labgate_lab"]
    assert [t for t, _ in kernel.requests] == [nl.NFT_MSG_GETTABLE, nl.NFT_MSG_GETCHAIN, nl.NFT_MSG_GETRULE]
    rule_request = kernel.requests[2][1]
    assert nl._string_attrs(rule_request, 0, len(rule_request), (nl.NFTA_RULE_TABLE,)) == {
        nl.NFTA_RULE_TABLE: "labgate_lab"}


def test_a_missing_table_is_none(monkeypatch):
    monkeypatch.setattr(nl, "open_socket", FakeKernel(TABLES, [9]))
    assert nl.table_shape("labgate_gone") is None


def test_a_ruleset_changing_between_requests_is_read_again(monkeypatch):
    kernel = FakeKernel(TABLES, [9, 10, 10, 10, 10, 10])  # the first attempt sees two generations
    monkeypatch.setattr(nl, "open_socket", kernel)
    assert nl.table_shape("labgate_lab") == TABLES["labgate_lab"]
    assert len(kernel.requests) == 2 + 3  # the first attempt stopped at the chain dump

    monkeypatch.setattr(nl, "open_socket", FakeKernel(TABLES, list(range(100))))  # never settles
    with pytest.raises(OSError, match="kept changing") as info:
        nl.table_shape("labgate_lab")
    assert info.value.errno == errno.EAGAIN
