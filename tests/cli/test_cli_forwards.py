"""`labgate forward add|ls|show|rm|enable|disable|edit`, `machine ls`, `gateway ls` as a real subprocess against a
real server: table output for people, `-o json` for scripts, and exit codes that mean something
(0 ok, 2 usage/validation, 3 not found, 4 conflict, 5 auth, 6 unreachable) with one `error:` and one `hint:` line."""

from __future__ import annotations

from tests.cli.conftest import EXTERNAL, Cli, Lab, assert_cli_error, contract, gw, lab_for, parse_table, subset
from tests.harness import database_url


# --- add --------------------------------------------------------------------------------------------------------------
def test_add_table(logged_in: Cli, lab: Lab) -> None:
    res = logged_in("forward", "add", "10.9.0.5", "22", "--name", "centos1", "--kind", "centos",
                    "-d", "ssh login").ok()
    (row,) = parse_table(res.stdout)
    (fwd,) = lab.forwards()
    assert subset(row, {"id": str(fwd["id"]), "name": "centos1", "kind": "centos", "proto": "tcp",
                        "external": f"{EXTERNAL}:4000", "target": "10.9.0.5:22", "status": "active",
                        "owner": "alice", "description": "ssh login"}), row
    assert res.stderr == ""


def test_add_json_with_every_option(logged_in: Cli, lab: Lab) -> None:
    res = logged_in("forward", "add", "10.9.0.6", "5900", "-n", "desk", "--kind", "windows", "-p", "udp",
                    "--gateway", "default", "--external-port", "4050", "--port-count", "3",
                    "--allow", "203.0.113.0/24", "--allow", "192.0.2.7/32", "--description", "vnc", "--disabled",
                    "-o", "json")
    fwd = res.json()
    assert isinstance(fwd, dict)  # one forward is one object, not a list
    assert subset(contract(fwd), {"gateway": "default", "protocol": "udp", "external_address": EXTERNAL,
                   "external_port": 4050, "port_count": 3, "target_address": "10.9.0.6", "target_port": 5900,
                   "name": "desk", "kind": "windows", "owner": "alice", "description": "vnc", "enabled": False,
                   "allowed_sources": ["203.0.113.0/24", "192.0.2.7/32"], "status": "disabled"})
    assert lab.get(fwd["id"]).json()["allowed_sources"] == ["203.0.113.0/24", "192.0.2.7/32"]


def test_add_block_shows_port_ranges(logged_in: Cli) -> None:
    res = logged_in("forward", "add", "10.9.0.6", "5900", "--port-count", "3").ok()
    (row,) = parse_table(res.stdout)
    assert row["external"] == f"{EXTERNAL}:4000-4002" and row["target"] == "10.9.0.6:5900-5902"


def test_add_uses_the_context_gateway(cli: Cli, tmp_path) -> None:
    gateways = [gw("default"), gw("lab2", port_range=["5000-5010"], external_address="198.51.100.2")]
    with lab_for(database_url(tmp_path, "two.db"), gateways) as two:
        cli.configure(two.url, two.tokens["alice"], gateway="lab2")
        fwd = cli("forward", "add", "10.9.0.5", "22", "-o", "json").json()
        assert (fwd["gateway"], fwd["external_address"], fwd["external_port"]) == ("lab2", "198.51.100.2", 5000)
        # An explicit --gateway wins over the context's.
        fwd = cli("forward", "add", "10.9.0.5", "22", "--gateway", "default", "-o", "json").json()
        assert (fwd["gateway"], fwd["external_port"]) == ("default", 4000)


# --- ls / show --------------------------------------------------------------------------------------------------------
def test_ls_table_json_and_filters(logged_in: Cli, lab: Lab) -> None:
    a = lab.create(name="vm1", kind="centos", target_port=22)
    b = lab.create(name="vm1", kind="centos", target_port=3389)
    c = lab.create(name="vm2", kind="windows", target_address="10.9.0.6", target_port=22, protocol="udp")
    lab.create("bob", name="vm1")
    rows = parse_table(logged_in("forward", "ls").ok().stdout)
    assert [r["id"] for r in rows] == [str(a["id"]), str(b["id"]), str(c["id"])]
    assert subset(rows[1], {"id": str(b["id"]), "name": "vm1", "kind": "centos", "proto": "tcp",
                            "external": f"{EXTERNAL}:{b['external_port']}", "target": "10.9.0.5:3389",
                            "status": "active", "owner": "alice", "description": ""}), rows[1]
    res = logged_in("forward", "ls", "-o", "json")
    data = res.json()
    assert res.stderr == ""
    assert [f["id"] for f in data] == [a["id"], b["id"], c["id"]]
    assert contract(data[0]) == {**contract(a), "status": "active"}

    assert c["external_port"] == a["external_port"]  # tcp and udp share numbers
    expected = {
        ("--name", "vm1"): [a["id"], b["id"]],
        ("--kind", "windows"): [c["id"]],
        ("--target-port", "22"): [a["id"], c["id"]],
        ("--protocol", "udp"): [c["id"]],
        # Each of the two narrows the result: without --target it would be [a, c], without --external-port [a, b].
        ("--target", "10.9.0.5", "--external-port", str(a["external_port"])): [a["id"]],
        ("--gateway", "elsewhere"): [],
    }
    results = logged_in.parallel(*[("forward", "ls", "-o", "json", *args) for args in expected])
    for (args, want), res in zip(expected.items(), results):
        assert [f["id"] for f in res.json()] == want, args


def test_ls_empty_and_admin_owner_filter(logged_in: Cli, lab: Lab) -> None:
    res = logged_in("forward", "ls").ok()
    assert res.stdout.strip() == "no forwards"
    bobs = lab.create("bob", name="b")
    lab.create("alice", name="a")
    admin = logged_in("forward", "ls", "--owner", "bob", "-o", "json", LABGATE_TOKEN=lab.tokens["root"]).json()
    assert [f["id"] for f in admin] == [bobs["id"]]


def test_show_table_and_json(logged_in: Cli, lab: Lab) -> None:
    fwd = lab.create(name="vm1", kind="centos", description="hello")
    rows = parse_table(logged_in("forward", "show", str(fwd["id"])).ok().stdout)
    fields = {r["field"]: r["value"] for r in rows}
    assert fields["id"] == str(fwd["id"]) and fields["name"] == "vm1" and fields["kind"] == "centos"
    assert fields["external_port"] == "4000" and fields["target_address"] == "10.9.0.5"
    assert fields["description"] == "hello" and fields["status"] == "active" and fields["owner"] == "alice"
    data = logged_in("forward", "show", str(fwd["id"]), "-o", "json").json()
    assert contract(data) == {**contract(fwd), "status": "active"}


# --- rm / enable / disable / edit -------------------------------------------------------------------------------------
def test_rm_one_and_several(logged_in: Cli, lab: Lab) -> None:
    a, b, c = (lab.create(target_address=f"10.9.0.{i}") for i in (5, 6, 7))
    res = logged_in("forward", "rm", str(a["id"])).ok()
    assert res.stdout.strip() == f"removed forward {a['id']}"
    assert lab.get(a["id"]).status_code == 404
    res = logged_in("forward", "rm", str(b["id"]), str(c["id"])).ok()
    assert res.stdout.splitlines() == [f"removed forward {b['id']}", f"removed forward {c['id']}"]
    assert lab.forwards() == []


def test_disable_enable(logged_in: Cli, lab: Lab) -> None:
    fwd = lab.create()
    (row,) = parse_table(logged_in("forward", "disable", str(fwd["id"])).ok().stdout)
    assert row["status"] == "disabled" and row["id"] == str(fwd["id"])
    assert lab.get(fwd["id"]).json()["enabled"] is False
    data = logged_in("forward", "enable", str(fwd["id"]), "-o", "json").json()
    assert data["enabled"] is True and data["status"] == "active" and data["external_port"] == fwd["external_port"]
    assert lab.get(fwd["id"]).json()["enabled"] is True


def test_edit(logged_in: Cli, lab: Lab) -> None:
    fwd = lab.create(name="vm1")
    (row,) = parse_table(logged_in("forward", "edit", str(fwd["id"]), "--target", "10.9.0.9", "--target-port",
                                   "2222", "-d", "moved", "--kind", "centos", "-n", "vm9").ok().stdout)
    assert row["target"] == "10.9.0.9:2222" and row["external"] == f"{EXTERNAL}:{fwd['external_port']}"
    assert (row["name"], row["kind"], row["description"]) == ("vm9", "centos", "moved")
    stored = lab.get(fwd["id"]).json()
    assert (stored["target_address"], stored["target_port"], stored["name"]) == ("10.9.0.9", 2222, "vm9")
    data = logged_in("forward", "edit", str(fwd["id"]), "--allow", "203.0.113.0/24", "--allow",
                     "198.51.100.0/24", "-o", "json").json()
    assert data["allowed_sources"] == ["203.0.113.0/24", "198.51.100.0/24"]
    data = logged_in("forward", "edit", str(fwd["id"]), "--allow-any", "-o", "json").json()
    assert data["allowed_sources"] == [] and lab.get(fwd["id"]).json()["allowed_sources"] == []


def test_edit_usage_errors(logged_in: Cli, lab: Lab) -> None:
    fwd = lab.create()
    assert_cli_error(logged_in("forward", "edit", str(fwd["id"])), 2, "nothing to change", hint="--help")
    res = logged_in("forward", "edit", str(fwd["id"]), "--allow", "10.0.0.0/8", "--allow-any")
    assert res.returncode == 2 and "exclude each other" in res.stderr
    assert lab.get(fwd["id"]).json()["updated_at"] == fwd["updated_at"]


# --- exit codes and the error format ----------------------------------------------------------------------------------
def test_usage_errors_exit_2(logged_in: Cli, lab: Lab) -> None:
    calls = (("forward", "add", "10.9.0.5", "not-a-port"), ("forward", "ls", "--bogus"))
    for args, res in zip(calls, logged_in.parallel(*calls)):
        assert res.returncode == 2, (args, res)
        assert res.stdout == ""
    assert lab.forwards() == []


def test_validation_from_server_exits_2_with_error_and_hint(logged_in: Cli, lab: Lab) -> None:
    """(Bug found at commit 52c3784, last assertion: a 422 printed `error: ...` with no `hint:` line, because
    ValidationFailed had no default hint.)"""
    res = logged_in("forward", "add", "10.10.0.5", "22")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines()[0] == ("error: target_address 10.10.0.5 is outside the target networks of "
                                          "gateway 'default' (10.9.0.0/24)")
    assert lab.forwards() == []
    assert_cli_error(res, 2, "outside the target networks")


def test_not_found_exits_3(logged_in: Cli, lab: Lab) -> None:
    bobs = lab.create("bob")
    calls = [("forward", *args) for args in (
        ("show", "424242"), ("show", str(bobs["id"])), ("rm", str(bobs["id"])),
        ("edit", str(bobs["id"]), "-d", "mine"))]
    for res in logged_in.parallel(*calls):
        assert_cli_error(res, 3, "does not exist", hint="labgate forward ls")
    assert contract(lab.get(bobs["id"], "bob").json()) == {**contract(bobs), "status": "active"}


def test_conflict_exits_4(logged_in: Cli, lab: Lab) -> None:
    holder = lab.create(external_port=4007)
    msg, hint = assert_cli_error(logged_in("forward", "add", "10.9.0.6", "22", "--external-port", "4007"), 4,
                                 "4007", f"forward {holder['id']}")
    assert "--external-port" in hint
    assert len(lab.forwards()) == 1


def test_range_exhausted_exits_4(cli: Cli, tmp_path) -> None:
    with lab_for(database_url(tmp_path, "small.db"), [gw(port_range=["4000"])]) as small:
        cli.configure(small.url, small.tokens["alice"])
        cli("forward", "add", "10.9.0.5", "22").ok()
        assert_cli_error(cli("forward", "add", "10.9.0.6", "22"), 4, hint="remove forwards")


def test_auth_exits_5(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, "lg_revoked_or_wrong")
    for res in cli.parallel(("forward", "add", "10.9.0.5", "22"), ("gateway", "ls")):
        assert_cli_error(res, 5, "invalid or revoked token", hint="labgate login")
    cli.configure(lab.url)  # a context without any token
    assert_cli_error(cli("forward", "ls"), 5, hint="labgate login")
    assert lab.forwards() == []


def test_unreachable_exits_6(cli: Cli, closed_url: str) -> None:
    cli.configure(closed_url, "lg_tok")
    for res in cli.parallel(("forward", "show", "1"), ("gateway", "ls")):
        assert_cli_error(res, 6, f"cannot reach labgate at {closed_url}", hint="context ls")


# --- machines and gateways --------------------------------------------------------------------------------------------
def test_machine_ls(logged_in: Cli, lab: Lab) -> None:
    a = lab.create(name="vm1", kind="centos", target_port=22)
    b = lab.create(name="vm1", kind="centos", target_port=3389)
    c = lab.create(name="vm2", kind="windows", target_address="10.9.0.6", target_port=5900, protocol="udp")
    lab.create("bob", name="bobvm")
    rows = parse_table(logged_in("machine", "ls").ok().stdout)
    expected = [
        {"name": "vm1", "kind": "centos", "owner": "alice", "addresses": "10.9.0.5",
         "forwards": f"tcp/22->{EXTERNAL}:{a['external_port']}, tcp/3389->{EXTERNAL}:{b['external_port']}"},
        {"name": "vm2", "kind": "windows", "owner": "alice", "addresses": "10.9.0.6",
         "forwards": f"udp/5900->{EXTERNAL}:{c['external_port']}"},
    ]
    assert len(rows) == 2 and all(subset(r, e) for r, e in zip(rows, expected)), rows
    res = logged_in("machine", "ls", "-o", "json")
    data = res.json()
    assert res.stderr == ""
    assert [(m["name"], m["kind"], m["owner"], m["addresses"]) for m in data] == [
        ("vm1", "centos", "alice", ["10.9.0.5"]), ("vm2", "windows", "alice", ["10.9.0.6"])]
    assert [f["id"] for f in data[0]["forwards"]] == [a["id"], b["id"]]
    by_kind = logged_in("machine", "ls", "--kind", "windows", "-o", "json")
    assert [m["name"] for m in by_kind.json()] == ["vm2"]


def test_gateway_ls(logged_in: Cli, lab: Lab) -> None:
    lab.create()
    lab.create(protocol="udp")
    lab.create(target_port=80)
    (row,) = parse_table(logged_in("gateway", "ls").ok().stdout)
    assert subset(row, {"name": "default", "external": EXTERNAL, "ranges": "4000-4100", "free tcp/udp": "99/100",
                        "forwards": "3", "last error": ""}), row
    res = logged_in("gateway", "ls", "-o", "json")
    (g,) = res.json()
    assert res.stderr == ""
    assert (g["name"], g["external_address"], g["port_ranges"], g["target_networks"]) == (
        "default", EXTERNAL, ["4000-4100"], ["10.9.0.0/24"])
    assert g["ports_total"] == 101 and g["ports_free"] == {"tcp": 99, "udp": 100} and g["forwards"] == 3
    assert row["status"] == g["status"]


def test_user_text_is_shown_verbatim_not_as_rich_markup(logged_in: Cli, lab: Lab) -> None:
    """A description is the user's text: a table must show it as typed. (Bug found at commit 52c3784: `table()`
    in cli/output.py passed cells to rich as markup, so "[b]docs[/b]" lost its brackets and "[/oops]" made
    `forward ls` crash with a MarkupError traceback - one user's description broke an admin's whole listing.)"""
    desc = "see [b]docs[/b] and [/oops]"
    fwd = lab.create(name="vm1", description=desc)
    assert lab.get(fwd["id"]).json()["description"] == desc  # the API stores it fine
    res = logged_in("forward", "ls")
    assert res.returncode == 0, res
    (row,) = parse_table(res.stdout)
    assert row["description"] == desc
