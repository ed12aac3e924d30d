"""The renderer is pure: desired forwards in, nft text out."""

import ipaddress

import pytest

from labgate.dataplane.render import ForwardRule, GatewayShape, render_changes, render_gateway_table

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
    assert "set restricted { type mark; elements = { 2 } }" in text
    assert "2 . 203.0.113.0/24" in text
    sources_line = next(line for line in text.splitlines() if "set sources" in line)
    assert "{ 2 . 203.0.113.0/24 }" in sources_line and "1 . " not in sources_line


def test_masquerade_rule_present_only_when_asked():
    assert "masquerade" in render_gateway_table(shape(True), [])
    assert "masquerade" not in render_gateway_table(shape(False), [])
    assert "{ 4000-4100, 5000 }" in render_gateway_table(shape(True), [])


def test_empty_table_has_no_elements_clause():
    text = render_gateway_table(shape(), [])
    assert "elements" not in text


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
