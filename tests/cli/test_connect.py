"""`labgate connect NAME --protocol P`: finds (or creates) the machine's forward and launches the client found on
PATH. The clients are stand-ins (#!/bin/sh scripts) that append their argv as one JSON line to a record file; PATH
holds only their folder and the Python interpreter's. Every launched argv is asserted exactly, which also proves
that no password ever appears on a command line. "Nothing was launched" is shown without waiting (no stand-in
running, no record: see Standins.nothing_launched)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import EXTERNAL, PYTHON_DIR, Cli, Lab, Standins, assert_cli_error, gw, lab_for
from tests.harness import database_url


@dataclass
class Vm:
    """Machine "vm1" (kind centos, 10.9.0.5) with a forward for each protocol: external port per target port."""

    ports: dict[int, int]


@pytest.fixture
def vm(lab: Lab) -> Vm:
    return Vm({p: lab.create(name="vm1", kind="centos", target_port=p)["external_port"]
               for p in (22, 3389, 5900, 80, 443)})


@pytest.fixture
def conn(logged_in: Cli, standins: Standins, vm: Vm) -> Cli:
    return logged_in


# --- ssh: interactive, in the foreground -----------------------------------------------------------------------------
def test_ssh_runs_in_the_foreground_with_exact_argv(conn: Cli, standins: Standins, vm: Vm) -> None:
    res = conn("connect", "vm1", "--protocol", "ssh", "--user", "alice", LG_STANDIN_EXIT="42")
    # labgate exits with ssh's status, known only once ssh has ended: it waited for ssh. So the record ssh writes
    # before it ends is already there (no polling).
    assert res.returncode == 42, res
    assert standins.calls() == [["ssh", "-p", str(vm.ports[22]), f"alice@{EXTERNAL}"]]


def test_ssh_is_the_default_and_its_exit_code_propagates(conn: Cli, standins: Standins, vm: Vm) -> None:
    res = conn("connect", "vm1", LG_STANDIN_EXIT="7")
    assert res.returncode == 7, res
    assert standins.calls() == [["ssh", "-p", str(vm.ports[22]), EXTERNAL]]


# --- GUI clients: detached --------------------------------------------------------------------------------------------
def test_rdp_prefers_xfreerdp(conn: Cli, standins: Standins, vm: Vm) -> None:
    res = conn("connect", "vm1", "-p", "rdp", "-u", "administrator").ok()
    argv = ["xfreerdp", f"/v:{EXTERNAL}:{vm.ports[3389]}", "/u:administrator"]
    assert standins.wait_calls() == [argv]
    assert res.stdout.strip() == "opened " + " ".join(argv)


def test_rdp_falls_back_to_remmina(conn: Cli, standins: Standins, vm: Vm) -> None:
    standins.remove("xfreerdp")
    conn("connect", "vm1", "-p", "rdp", "-u", "administrator").ok()
    assert standins.wait_calls() == [["remmina", "-c", f"rdp://administrator@{EXTERNAL}:{vm.ports[3389]}"]]


def test_vnc(conn: Cli, standins: Standins, vm: Vm) -> None:
    conn("connect", "vm1", "-p", "vnc").ok()
    assert standins.wait_calls() == [["vncviewer", f"{EXTERNAL}::{vm.ports[5900]}"]]


def test_vnc_falls_back_to_remmina(conn: Cli, standins: Standins, vm: Vm) -> None:
    standins.remove("vncviewer")
    conn("connect", "vm1", "-p", "vnc").ok()
    assert standins.wait_calls() == [["remmina", "-c", f"vnc://{EXTERNAL}:{vm.ports[5900]}"]]


@pytest.mark.parametrize("protocol, port", [("https", 443), ("http", 80)])
def test_browser(conn: Cli, standins: Standins, vm: Vm, protocol: str, port: int) -> None:
    conn("connect", "vm1", "-p", protocol.upper()).ok()  # the protocol is case-insensitive
    assert standins.wait_calls() == [["xdg-open", f"{protocol}://{EXTERNAL}:{vm.ports[port]}/"]]


def test_scp_uses_filezilla_when_installed(conn: Cli, standins: Standins, vm: Vm) -> None:
    conn("connect", "vm1", "-p", "scp", "-u", "alice").ok()
    assert standins.wait_calls() == [["filezilla", f"sftp://alice@{EXTERNAL}:{vm.ports[22]}"]]


def test_scp_without_filezilla_prints_the_scp_command(conn: Cli, standins: Standins, vm: Vm) -> None:
    standins.remove("filezilla")
    res = conn("connect", "vm1", "-p", "scp", "-u", "alice")
    assert res.returncode == 0, res
    assert res.stdout == f"scp -P {vm.ports[22]} FILE alice@{EXTERNAL}:\n"
    assert standins.nothing_launched()


# --- per-kind target ports --------------------------------------------------------------------------------------------
def test_builtin_kind_overrides_onefs_and_esrs(conn: Cli, lab: Lab, standins: Standins) -> None:
    lab.create(name="isilon", kind="onefs", target_address="10.9.0.20", target_port=443)  # a decoy
    onefs = lab.create(name="isilon", kind="onefs", target_address="10.9.0.20", target_port=8080)
    esrs = lab.create(name="esrs1", kind="esrs", target_address="10.9.0.21", target_port=9443)
    lab.create(name="esrs1", kind="esrs", target_address="10.9.0.21", target_port=443)  # a decoy
    conn("connect", "isilon", "-p", "https").ok()
    assert standins.wait_calls(1) == [["xdg-open", f"https://{EXTERNAL}:{onefs['external_port']}/"]]
    conn("connect", "esrs1", "-p", "https").ok()
    assert standins.wait_calls(2)[1] == ["xdg-open", f"https://{EXTERNAL}:{esrs['external_port']}/"]


def test_config_kind_overrides(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    logged_in.configure(lab.url, lab.tokens["alice"], kinds={"appliance": {"ssh": 2222}, "onefs": {"https": 8443}})
    ssh = lab.create(name="box", kind="appliance", target_port=2222)
    lab.create(name="box", kind="appliance", target_port=22)  # a decoy: the config says 2222
    https = lab.create(name="isilon", kind="onefs", target_address="10.9.0.20", target_port=8443)
    lab.create(name="isilon", kind="onefs", target_address="10.9.0.20", target_port=8080)  # built-in loses
    res = logged_in("connect", "box")
    assert res.returncode == 0, res
    assert standins.calls() == [["ssh", "-p", str(ssh["external_port"]), EXTERNAL]]
    logged_in("connect", "isilon", "-p", "https").ok()
    assert standins.wait_calls(2)[1] == ["xdg-open", f"https://{EXTERNAL}:{https['external_port']}/"]


def test_kind_option_for_machines_without_kind(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    fwd = lab.create(name="nokind", target_port=8080)
    logged_in("connect", "nokind", "-p", "https", "--kind", "onefs").ok()
    assert standins.wait_calls() == [["xdg-open", f"https://{EXTERNAL}:{fwd['external_port']}/"]]


# --- --print ----------------------------------------------------------------------------------------------------------
def test_print_shows_the_command_and_launches_nothing(conn: Cli, standins: Standins, vm: Vm) -> None:
    ssh, rdp, https, scp = conn.parallel(
        ("connect", "vm1", "--print", "-u", "bob"), ("connect", "vm1", "-p", "rdp", "--print"),
        ("connect", "vm1", "-p", "https", "--print"), ("connect", "vm1", "-p", "scp", "--print"))
    assert ssh.ok().stdout == f"ssh -p {vm.ports[22]} bob@{EXTERNAL}\n"
    assert rdp.ok().stdout == f"xfreerdp /v:{EXTERNAL}:{vm.ports[3389]}\n"
    assert https.ok().stdout == f"https://{EXTERNAL}:{vm.ports[443]}/\n"
    assert scp.ok().stdout == f"scp -P {vm.ports[22]} FILE {EXTERNAL}:\n"
    assert standins.nothing_launched()


def test_print_shows_the_command_that_would_run(conn: Cli, standins: Standins, vm: Vm) -> None:
    """`--print` prints "the exact command" instead of running it. With only remmina installed the command that
    would run is remmina's. (Bug found at commit 52c3784: --print always printed `launch.printable`, i.e.
    xfreerdp / vncviewer, ignoring the client actually found.)"""
    standins.remove("xfreerdp")
    res = conn("connect", "vm1", "-p", "rdp", "--print").ok()
    assert res.stdout == f"remmina -c rdp://{EXTERNAL}:{vm.ports[3389]}\n"
    assert standins.nothing_launched()


# --- --create ---------------------------------------------------------------------------------------------------------
def test_create_with_address_makes_the_forward_then_launches(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    res = logged_in("connect", "newvm", "--create", "--address", "10.9.0.7", "-u", "root")
    assert res.returncode == 0, res
    (fwd,) = lab.forwards(name="newvm")
    assert (fwd["target_address"], fwd["target_port"], fwd["protocol"], fwd["owner"]) == ("10.9.0.7", 22, "tcp",
                                                                                         "alice")
    assert standins.calls() == [["ssh", "-p", str(fwd["external_port"]), f"root@{EXTERNAL}"]]


def test_create_reuses_the_known_address_and_kind(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    lab.create(name="win", kind="windows", target_address="10.9.0.8", target_port=22)
    logged_in("connect", "win", "-p", "rdp", "--create").ok()
    rdp = lab.forwards(name="win", target_port=3389)
    assert [(f["target_address"], f["kind"]) for f in rdp] == [("10.9.0.8", "windows")]
    assert standins.wait_calls() == [["xfreerdp", f"/v:{EXTERNAL}:{rdp[0]['external_port']}"]]


def test_missing_forward_without_create_exits_3(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    lab.create(name="half", target_port=22)
    ghost, no_rdp = logged_in.parallel(("connect", "ghost"), ("connect", "half", "-p", "rdp"))
    assert_cli_error(ghost, 3, "no machine named 'ghost' has a forward",
                     hint="labgate connect ghost --protocol ssh --create --address IP")
    assert_cli_error(no_rdp, 3, "machine 'half' has no enabled forward to port 3389 (rdp)",
                     hint="labgate connect half --protocol rdp --create")
    assert len(lab.forwards()) == 1
    assert standins.nothing_launched()


def test_disabled_forward_is_not_used(conn: Cli, lab: Lab, standins: Standins, vm: Vm) -> None:
    (ssh,) = lab.forwards(name="vm1", target_port=22)
    assert lab.http["alice"].patch(f"/api/v1/forwards/{ssh['id']}", json={"enabled": False}).status_code == 200
    assert_cli_error(conn("connect", "vm1"), 3, "no enabled forward to port 22", hint="--create")
    assert standins.nothing_launched()


# --- nothing installed ------------------------------------------------------------------------------------------------
def test_nothing_installed_says_what_to_install_and_prints_the_command(conn: Cli, standins: Standins, vm: Vm,
                                                                       tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    path = f"{empty}{os.pathsep}{PYTHON_DIR}"
    rdp, ssh, vnc, https = conn.parallel(*[("connect", "vm1", "-p", p, "-u", "u1")
                                           for p in ("rdp", "ssh", "vnc", "https")], path=path)
    for res, install, command in (
            (rdp, "freerdp2-x11", f"xfreerdp /v:{EXTERNAL}:{vm.ports[3389]} /u:u1"),
            (ssh, "openssh-client", f"ssh -p {vm.ports[22]} u1@{EXTERNAL}"),
            (vnc, "tigervnc-viewer", f"vncviewer {EXTERNAL}::{vm.ports[5900]}"),
            (https, "web browser", f"https://{EXTERNAL}:{vm.ports[443]}/")):
        assert res.returncode == 1, res
        lines = res.stdout.splitlines()
        assert install in res.stdout and "no " in lines[0], res
        assert lines[-1] == command, res
    assert standins.nothing_launched()


# --- context host, protocols, passwords -------------------------------------------------------------------------------
def test_context_host_overrides_the_dialled_host(cli: Cli, lab: Lab, standins: Standins, vm: Vm) -> None:
    cli.configure(lab.url, lab.tokens["alice"], host="gw.example.test")
    cli("connect", "vm1", "-u", "alice").ok()
    assert standins.calls() == [["ssh", "-p", str(vm.ports[22]), "alice@gw.example.test"]]


def test_unknown_protocol_exits_2(conn: Cli, standins: Standins) -> None:
    assert_cli_error(conn("connect", "vm1", "-p", "telnet"), 2, "unknown protocol 'telnet'", hint="ssh")
    assert standins.nothing_launched()


def test_there_is_no_password_option(conn: Cli, standins: Standins) -> None:
    help_text = conn("connect", "--help").ok().stdout
    assert "--user" in help_text and "password" not in help_text.lower()
    res = conn("connect", "vm1", "--password", "hunter2")
    assert res.returncode == 2 and res.stdout == ""
    assert standins.nothing_launched()


# --- several matching forwards (issue 9: `connect` silently picked one) --------------------------------------------
def note_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("note: ")]


def test_several_forwards_to_the_same_machine_says_which_and_how_to_choose(logged_in: Cli, lab: Lab,
                                                                         standins: Standins) -> None:
    first = lab.create(name="dup", target_port=22)
    second = lab.create(name="dup", target_port=22)  # same machine and port, another external port
    res = logged_in("connect", "dup", "-u", "u1")
    assert res.returncode == 0, res
    assert standins.calls() == [["ssh", "-p", str(first["external_port"]), f"u1@{EXTERNAL}"]]
    (note,) = note_lines(res)
    assert f"using #{first['id']} on gateway default port {first['external_port']}" in note, note
    assert f"#{second['id']} on gateway default port {second['external_port']}" in note, note
    assert "--id" in note, note
    # --id chooses the other one, silently.
    res = logged_in("connect", "dup", "-u", "u1", "--id", str(second["id"]))
    assert res.returncode == 0 and note_lines(res) == [], res
    assert standins.calls()[-1] == ["ssh", "-p", str(second["external_port"]), f"u1@{EXTERNAL}"]
    # --print keeps stdout to the command alone; the note is on stderr.
    res = logged_in("connect", "dup", "--print")
    assert res.ok().stdout == f"ssh -p {first['external_port']} {EXTERNAL}\n" and len(note_lines(res)) == 1


def test_a_restricted_forward_is_not_preferred(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    restricted = lab.create(name="dup", target_port=22, allowed_sources=["192.0.2.0/24"])
    open_one = lab.create(name="dup", target_port=22)
    res = logged_in("connect", "dup", "--print").ok()
    assert res.stdout == f"ssh -p {open_one['external_port']} {EXTERNAL}\n"
    (note,) = note_lines(res)
    assert f"using #{open_one['id']}" in note and f"#{restricted['id']}" in note and "only from 192.0.2.0/24" in note


def test_several_gateways_suggest_gateway_too(cli: Cli, tmp_path: Path, standins: Standins) -> None:
    gateways = [gw("default"), gw("lab2", port_range=["5000-5010"], external_address="198.51.100.2")]
    with lab_for(database_url(tmp_path, "two.db"), gateways) as two:
        cli.configure(two.url, two.tokens["alice"])
        a = two.create(name="vm", target_port=22, gateway="default")
        b = two.create(name="vm", target_port=22, gateway="lab2")
        res = cli("connect", "vm", "--print").ok()
        assert res.stdout == f"ssh -p {a['external_port']} {EXTERNAL}\n"
        (note,) = note_lines(res)
        assert f"#{b['id']} on gateway lab2 port 5000" in note and "--id N or --gateway G" in note, note
        res = cli("connect", "vm", "--print", "--gateway", "lab2").ok()
        assert res.stdout == "ssh -p 5000 198.51.100.2\n" and note_lines(res) == []


def test_same_name_different_machines_is_refused_with_the_list(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    a = lab.create(name="twin", target_address="10.9.0.5", target_port=22)
    b = lab.create(name="twin", target_address="10.9.0.6", target_port=22)
    message, hint = assert_cli_error(logged_in("connect", "twin"), 2, "different machines")
    assert f"#{a['id']} on gateway default port {a['external_port']} -> 10.9.0.5:22" in message
    assert f"#{b['id']} on gateway default port {b['external_port']} -> 10.9.0.6:22" in message
    assert f"--id {a['id']}" in hint
    assert standins.nothing_launched()
    res = logged_in("connect", "twin", "--id", str(b["id"]), "-u", "u1")
    assert res.returncode == 0, res
    assert standins.calls() == [["ssh", "-p", str(b["external_port"]), f"u1@{EXTERNAL}"]]


def test_id_that_does_not_match_exits_3(logged_in: Cli, lab: Lab, standins: Standins) -> None:
    ssh = lab.create(name="vm9", target_port=22)
    other = lab.create(name="vm9", target_port=3389)
    assert_cli_error(logged_in("connect", "vm9", "--id", str(other["id"])), 3, f"forward {other['id']}",
                     f"#{ssh['id']}", hint="forward ls")
    assert standins.nothing_launched()
