"""`labgate install --root DIR` and `labgate uninstall --root DIR`: the staged files, their modes, the config as
labgate loads it, the units as systemd reads them, idempotence and what uninstall keeps. No root needed: in a
staged tree nothing is given to the service user (the package does that on the target machine, as install says),
so everything belongs to whoever ran install."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from labgate.cli import install
from labgate.config import load_settings
from tests.cli.conftest import assert_cli_error
from tests.harness import require
from tests.install.conftest import VENV_LABGATE, labgate
from tests.install.unit_sandbox import parse_unit, syscall_filter, words

SERVICE = "etc/systemd/system/labgate.service"
AGENT = "etc/systemd/system/labgate-agent.service"
CONFIG = "etc/labgate/labgate.toml"
DATA = "var/lib/labgate"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path of the tree with its mode, owner, content and modification time."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, content, st.st_mtime_ns)
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_stages_config_data_dir_and_units(root: Path) -> None:
    ran = labgate("install", "--root", str(root)).ok()
    assert ran.actions() == [("created", str(root / p)) for p in ("etc/labgate", CONFIG, DATA, SERVICE, AGENT)]
    # What the package must still do, since no user exists in a staged tree.
    advice = ran.stdout.split("\n\n", 1)[1]
    assert "useradd --system" in advice and "chown labgate:labgate /var/lib/labgate" in advice
    assert "chgrp labgate /etc/labgate /etc/labgate/labgate.toml" in advice
    assert f"have {VENV_LABGATE} there" in advice
    # Modes: the config may hold a database password; the data folder is labgate's own rule (0700).
    assert (mode(root / "etc/labgate"), mode(root / CONFIG), mode(root / DATA)) == (0o750, 0o640, 0o700)
    assert mode(root / SERVICE) == mode(root / AGENT) == 0o644
    for path in (root / "etc/labgate", root / CONFIG, root / DATA, root / SERVICE):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())


def test_the_config_is_a_working_one_for_labgate_itself(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labgate("install", "--root", str(root)).ok()
    text = (root / CONFIG).read_text()
    assert "runuser -u labgate -- labgate token create admin --admin --config /etc/labgate/labgate.toml" in text
    for name in [k for k in os.environ if k.startswith("LABGATE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(root / CONFIG)
    assert settings.server.data_dir == "/var/lib/labgate"
    assert settings.server.database == "sqlite:////var/lib/labgate/labgate.db"
    assert settings.server.listen == "127.0.0.1:3000" and settings.server.dataplane == "nft"
    [gw] = settings.gateway
    assert (gw.name, gw.netns, gw.external_address, gw.port_range) == ("default", "", "auto", ["4000-4999"])
    assert gw.target_networks == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    # And as `labgate config` prints it.
    shown = json.loads(labgate("config", "--config", str(root / CONFIG)).ok().stdout)
    assert shown["server"]["data_dir"] == "/var/lib/labgate" and shown["gateway"][0]["name"] == "default"


def test_units_run_labgate_as_the_user_with_two_capabilities(root: Path) -> None:
    labgate("install", "--root", str(root), "--user", "lgsvc").ok()
    units = {name: parse_unit((root / path).read_text()) for name, path in (("serve", SERVICE), ("agent", AGENT))}
    for command, unit in units.items():
        service = unit["Service"]
        assert service["ExecStart"] == [f"{VENV_LABGATE} {command} --config /etc/labgate/labgate.toml"]
        assert service["User"] == service["Group"] == ["lgsvc"]
        assert set(words(service, "AmbientCapabilities")) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
        assert set(words(service, "CapabilityBoundingSet")) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("ProtectControlGroups", "yes"), ("LockPersonality", "yes"),
                           ("RestrictRealtime", "yes"), ("SystemCallArchitectures", "native"),
                           ("RestrictNamespaces", "net"), ("MemoryDenyWriteExecute", "yes")):
            assert service[key] == [value], key
        assert words(service, "ReadWritePaths") == ["/var/lib/labgate"]
        assert set(words(service, "RestrictAddressFamilies")) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
        # Left out on purpose (see the unit's comments): they would break the dataplane.
        for key in ("ProtectKernelTunables", "PrivateUsers", "PrivateNetwork", "ProcSubset"):
            assert key not in service, key
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # The namespace work and the capability setup survive the system call filter.
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (Debian: systemd)")
    allowed = set(syscall_filter(units["serve"]["Service"]) or [])
    assert {"setns", "socket", "execve", "clone", "prlimit64", "sendmsg", "recvmsg"} <= allowed
    assert not {"mount", "setuid", "init_module", "setrlimit"} & allowed


def test_units_pass_systemd_analyze_verify_and_security(root: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (Debian: systemd)")
    labgate("install", "--root", str(root)).ok()
    units = [str(root / SERVICE), str(root / AGENT)]
    verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == verify.stdout == "", verify
    # A mistaken key is reported by the same call (so the check above means something).
    broken = root / "broken.service"
    broken.write_text((root / SERVICE).read_text().replace("ProtectClock=", "ProtectClocks="))
    bad = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True)
    assert "Unknown key 'ProtectClocks'" in bad.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(root / SERVICE)],
                              capture_output=True, text=True)
    level = re.search(r"Overall exposure level for labgate.service: ([\d.]+) (\w+)", security.stdout)
    assert level and level.group(2) in ("SAFE", "OK"), security.stdout[-2000:]


def test_a_second_install_changes_nothing_and_an_edited_config_is_kept(root: Path) -> None:
    labgate("install", "--root", str(root)).ok()
    before = snapshot(root)
    again = labgate("install", "--root", str(root)).ok()
    assert {action for action, _ in again.actions()} == {"unchanged"}
    assert snapshot(root) == before
    edited = (root / CONFIG).read_text().replace('external_address = "auto"', 'external_address = "198.51.100.1"')
    (root / CONFIG).write_text(edited)
    (root / SERVICE).write_text((root / SERVICE).read_text().replace("RestartSec=2s", "RestartSec=9s"))
    third = labgate("install", "--root", str(root)).ok()
    assert ("kept", f"{root / CONFIG} (edited: not overwritten)") in third.actions()
    assert ("updated", str(root / SERVICE)) in third.actions()
    assert (root / CONFIG).read_text() == edited
    assert "RestartSec=2s" in (root / SERVICE).read_text()


def test_an_edited_config_that_does_not_load_is_reported(root: Path) -> None:
    labgate("install", "--root", str(root)).ok()
    (root / CONFIG).write_text((root / CONFIG).read_text().replace('port_range = "4000-4999"', 'port_range = "x"'))
    ran = labgate("install", "--root", str(root)).ok()
    assert "note: config file" in ran.stderr and "port range 'x'" in ran.stderr
    assert "labgate will not start until it is fixed" in ran.stderr


def test_a_gateway_in_a_named_namespace_is_flagged(root: Path) -> None:
    labgate("install", "--root", str(root)).ok()
    (root / CONFIG).write_text((root / CONFIG).read_text().replace('netns = ""', 'netns = "lab1"'))
    ran = labgate("install", "--root", str(root)).ok()
    assert "gateway 'default' is in namespace 'lab1': entering it needs CAP_SYS_ADMIN" in ran.stderr


def test_a_program_under_tmp_is_flagged(root: Path) -> None:
    """The units' PrivateTmp hides /tmp from the service: a labgate (or venv) there would never start."""
    ran = labgate("install", "--root", str(root), "--labgate", "/tmp/venv/bin/labgate").ok()
    assert "/tmp/venv/bin/labgate is under /tmp, which the units hide (PrivateTmp=yes)" in ran.stderr
    ran = labgate("install", "--root", str(root), "--labgate", "/opt/labgate/bin/labgate").ok()
    assert "PrivateTmp" not in ran.stderr


def test_uninstall_removes_units_and_keeps_config_and_data_unless_purged(root: Path) -> None:
    labgate("install", "--root", str(root)).ok()
    (root / DATA / "labgate.db").write_text("the database")
    ran = labgate("uninstall", "--root", str(root)).ok()
    assert ("removed", str(root / SERVICE)) in ran.actions() and ("removed", str(root / AGENT)) in ran.actions()
    assert not (root / SERVICE).exists() and not (root / AGENT).exists()
    assert (root / CONFIG).exists() and (root / DATA / "labgate.db").read_text() == "the database"
    assert ("kept", f"{root / CONFIG}, {root / DATA} (--purge removes them)") in ran.actions()
    assert "userdel labgate" in ran.stdout
    # Installed again: the database and the config are found as they were.
    again = labgate("install", "--root", str(root)).ok()
    assert ("unchanged", str(root / CONFIG)) in again.actions() and ("unchanged", str(root / DATA)) in again.actions()
    # --purge: everything goes, but a config folder holding other files (TLS keys) keeps them.
    (root / "etc/labgate/tls").mkdir()
    (root / "var/log/labgate").mkdir(parents=True)
    purged = labgate("uninstall", "--root", str(root), "--purge").ok()
    assert not (root / CONFIG).exists() and not (root / DATA).exists() and not (root / "var/log/labgate").exists()
    assert (root / "etc/labgate/tls").is_dir()
    assert ("kept", f"{root / 'etc/labgate'} (other files are in it: tls)") in purged.actions()
    (root / "etc/labgate/tls").rmdir()
    labgate("uninstall", "--root", str(root), "--purge").ok()
    assert not (root / "etc/labgate").exists()
    # Nothing left to do: still fine.
    assert labgate("uninstall", "--root", str(root), "--purge").ok().actions() == []


def test_usage_errors(root: Path, tmp_path: Path) -> None:
    assert_cli_error(labgate("install", "--root", str(root), "--enable"), 2, "--enable and --start")
    assert_cli_error(labgate("install", "--root", str(root), "--labgate", "bin/labgate"), 2, "not an absolute path")
    assert_cli_error(labgate("install", "--root", str(root), "--user", "Bad Name"), 2, "user name 'Bad Name'")
    assert_cli_error(labgate("uninstall", "--root", str(tmp_path / "missing")), 2, "is not a folder")
    assert not root.exists()


def test_exec_start_quotes_an_unusual_path(root: Path) -> None:
    labgate("install", "--root", str(root), "--labgate", "/opt/lab gate/50%/labgate").ok()
    exec_start = parse_unit((root / SERVICE).read_text())["Service"]["ExecStart"]
    assert exec_start == ['"/opt/lab gate/50%%/labgate" serve --config /etc/labgate/labgate.toml']
    assert install.systemd_quote("/usr/bin/labgate") == "/usr/bin/labgate"
