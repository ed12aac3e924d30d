"""The renderer is pure: desired forwards in, nft text out."""

import ipaddress

import pytest

from labgate.dataplane.render import (
    SENTINEL_MARK,
    SENTINELS,
    ForwardRule,
    GatewayShape,
    merged_ranges,
    render_changes,
    render_gateway_table,
    render_usage_ensure,
    render_usage_table,
)

EXT = ipaddress.IPv4Address("198.51.100.1")
T1 = ipaddress.IPv4Address("10.9.0.5")


def shape(masquerade=True):
    return GatewayShape("labgate_gw", EXT, ((4000, 4100), (5000, 5000)), masquerade)


def rule(id=1, port=4000, count=1, proto="tcp", sources=()):
    return ForwardRule(id, proto, EXT, port, T1, 22, count, tuple(ipaddress.IPv4Network(s) for s in sources))


def test_full_table_replaces_only_its_own_table_atomically():
    text = render_gateway_table(shape(), [rule()])
    lines = text.splitlines()
    assert lines[:3] == ["add table ip labgate_gw", "delete table ip labgate_gw", "table ip labgate_gw {"]
    assert "198.51.100.1 . tcp . 4000 : 1" in text
    assert "198.51.100.1 . tcp . 4000 : 10.9.0.5 . 22" in text
    assert text.count("table ip ") == 3  # no other table is named anywhere


def test_block_expands_port_by_port_with_matching_target_ports():
    text = render_gateway_table(shape(), [rule(count=3)])
    for i in range(3):
        assert f"198.51.100.1 . tcp . {4000 + i} : 10.9.0.5 . {22 + i}" in text


def test_sources_only_for_restricted_forwards():
    text = render_gateway_table(shape(), [rule(1), rule(2, 4001, sources=["203.0.113.0/24"])])
    assert "set restricted { type mark; elements = { 2, 4294967295 } }" in text  # and the sentinel
    assert "2 . 203.0.113.0/24" in text
    sources_line = next(line for line in text.splitlines() if "set sources" in line)
    assert "{ 2 . 203.0.113.0/24 }" in sources_line and "1 . " not in sources_line


def test_masquerade_rule_present_only_when_asked():
    assert "masquerade" in render_gateway_table(shape(True), [])
    assert "masquerade" not in render_gateway_table(shape(False), [])
    assert "{ 4000-4100, 5000 }" in render_gateway_table(shape(True), [])


def test_masquerade_rule_reads_the_port_ranges_from_a_named_set():
    """nft 1.0.6 lists a constant or anonymous set compared with `ct original proto-dst` as "0xfa0 [invalid type]",
    which `nft -f` cannot read back; a named set of type inet_service lists by name (tests/kernel/
    test_saved_ruleset.py reloads the listing in a real namespace)."""
    lines = [line.strip() for line in render_gateway_table(shape(True), [rule()]).splitlines()]
    assert "set port_ranges { type inet_service; flags interval; elements = { 4000-4100, 5000 } }" in lines
    masq = [line for line in lines if "masquerade" in line]
    assert masq == ["ct status dnat ct original ip daddr 198.51.100.1 meta l4proto { tcp, udp } "
                    "ct original proto-dst @port_ranges masquerade"]
    # The ranges are nowhere else: no anonymous set or constant is ever compared with ct original proto-dst.
    for text in (render_gateway_table(shape(True), [rule()]), render_gateway_table(shape(False), [rule()])):
        for line in text.splitlines():
            if "proto-dst" in line:
                assert line.split("proto-dst", 1)[1].split()[0] == "@port_ranges", line


def test_port_ranges_are_sorted_and_merged_for_the_named_interval_set():
    # a named interval set refuses overlapping elements ("conflicting intervals"); adjacent ones are one interval
    assert merged_ranges([(5000, 5010), (4000, 4050), (4051, 4100), (4090, 4095), (6000, 6000)]) == [
        (4000, 4100), (5000, 5010), (6000, 6000)]
    assert merged_ranges([(4000, 4100), (4100, 4100)]) == [(4000, 4100)]
    assert merged_ranges([(1, 65535), (4000, 4100)]) == [(1, 65535)]
    assert merged_ranges([]) == []
    wide = GatewayShape("labgate_gw", EXT, ((5000, 5010), (4000, 4050), (4051, 4100)), True)
    assert "set port_ranges { type inet_service; flags interval; elements = { 4000-4100, 5000-5010 } }" in \
        render_gateway_table(wide, [])


def test_no_rule_compares_a_ct_expression_with_a_literal_nft_cannot_type():
    """Every rule of both tables must list in a form `nft -f` reads back: the only ct expressions compared with
    literals are those nft 1.0.6 names the type of (status, direction, state, original ip daddr)."""
    texts = [render_gateway_table(shape(m), [rule(1), rule(2, 4001, 3, "udp", ["203.0.113.0/24"])])
             for m in (True, False)]
    texts += [render_usage_table(shape(), [1, 2]), render_usage_ensure(shape(), [1, 2])]
    typed = {"status", "direction", "state", "mark"}
    for text in texts:
        for line in text.splitlines():
            words = line.split()
            for i, word in enumerate(words[:-1]):
                if word == "ct" and words[i + 1] not in typed:
                    assert words[i + 1:i + 4] == ["original", "ip", "daddr"] or \
                        words[i + 1:i + 4] == ["original", "proto-dst", "@port_ranges"], line


def test_an_empty_table_holds_only_the_sentinels():
    text = render_gateway_table(shape(), [])
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("set sources"):
            assert "elements" not in line, line
        for sentinel in SENTINELS:
            if line.startswith((f"map {sentinel.set_name} ", f"set {sentinel.set_name} ")):
                assert f"elements = {{ {sentinel.element} }}" in line, line


def test_sentinels_are_never_touched_by_changes_and_never_a_forward():
    text = render_changes(shape(), [rule(1)], [rule(2, 4001, sources=["203.0.113.0/24"])])
    assert all(s.key not in text for s in SENTINELS)
    with pytest.raises(ValueError):
        ForwardRule(SENTINEL_MARK, "tcp", EXT, 4000, ipaddress.IPv4Address("10.9.0.5"), 22)


def test_changes_delete_before_add_in_one_batch():
    old, new = rule(1), ForwardRule(1, "tcp", EXT, 4000, ipaddress.IPv4Address("10.9.0.6"), 22)
    text = render_changes(shape(), [old], [new])
    lines = text.splitlines()
    assert lines[0] == "delete element ip labgate_gw ids { 198.51.100.1 . tcp . 4000 }"
    assert lines[1] == "delete element ip labgate_gw targets { 198.51.100.1 . tcp . 4000 }"
    assert lines[2] == "add element ip labgate_gw ids { 198.51.100.1 . tcp . 4000 : 1 }"
    assert lines[3] == "add element ip labgate_gw targets { 198.51.100.1 . tcp . 4000 : 10.9.0.6 . 22 }"


def test_no_change_renders_nothing():
    assert render_changes(shape(), [], []) == ""


@pytest.mark.parametrize("kwargs", [
    {"id": 0}, {"id": 2**32}, {"protocol": "icmp"}, {"protocol": "tcp; flush ruleset"},
    {"external_port": 0}, {"external_port": 65535, "port_count": 2}, {"target_port": 70000},
    {"port_count": 0}, {"target_address": "10.9.0.5"}, {"external_address": "198.51.100.1 ; drop"},
])
def test_rule_refuses_anything_not_well_formed(kwargs):
    base = dict(id=1, protocol="tcp", external_address=EXT, external_port=4000, target_address=T1, target_port=22)
    base.update(kwargs)
    with pytest.raises(ValueError):
        ForwardRule(**base)


def test_shape_refuses_table_names_that_are_not_identifiers():
    with pytest.raises(ValueError):
        GatewayShape("labgate_x; flush ruleset", EXT, ((1, 2),), True)
