"""The unit `labgate install` writes, run for real: `labgate serve` as a new unprivileged system user with only
CAP_NET_ADMIN and CAP_NET_RAW, under the unit's own sandbox as far as it can be reproduced without systemd
(tests/install/unit_sandbox.py), serving a gateway whose namespace this test builds; a forward created through its
API carries TCP traffic. Also: install and uninstall refuse to change the machine for a user who is not root."""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labgate.cli import install
from labgate.lab import Service, in_netns, tcp_request
from tests.cli.conftest import assert_cli_error
from tests.harness import require, stop_process
from tests.install import unit_sandbox
from tests.install.conftest import Ran, labgate, runtime_for
from tests.kernel.conftest import lab  # noqa: F401 - the fixture: client, gateway and lab namespaces

pytestmark = pytest.mark.kernel

NET_ADMIN_AND_RAW = (1 << 12) | (1 << 13)  # CAP_NET_ADMIN = 12, CAP_NET_RAW = 13
API = "http://127.0.0.1:3000"  # the installed config's listen address, free in the gateway's own namespace


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:  # as in tests/kernel: fail, never skip (`-m "not kernel"` leaves these out)
        pytest.fail("these tests need root: run `make test` as root", pytrace=False)


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def children(pid: int) -> dict[int, dict[str, str]]:
    """{pid: status} of the processes `pid` started that are still running."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = status(int(entry.name))
            except OSError:  # gone meanwhile
                continue
            if fields.get("PPid") == str(pid):
                found[int(entry.name)] = fields
    return found


def api(ns: str, method: str, path: str, token: str, **kw) -> httpx.Response:
    return in_netns(ns, lambda: httpx.request(method, API + path, headers={"Authorization": f"Bearer {token}"},
                                              timeout=10, **kw))


def wait_until(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"labgate serve exited while waiting for {what}:\n{log.read_text()}"
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.1)


def test_serve_as_the_unit_runs_it_forwards_real_traffic(lab, service_user: str, shared_dir: Path) -> None:
    for program in ("systemd-analyze", "runuser", "unshare"):
        require(shutil.which(program) is not None, f"{program} is missing (Debian: systemd, util-linux)")
    require(ctypes.util.find_library("seccomp") is not None, "libseccomp is missing (Debian: libseccomp2)")
    user = service_user
    root = shared_dir / "root"
    runtime = runtime_for(user, shared_dir)
    labgate("install", "--root", str(root), "--user", user, "--labgate", runtime.labgate).ok()
    # What install tells the package to do on the target machine (the user itself is made: service_user).
    subprocess.run(["chgrp", user, root / "etc/labgate", root / "etc/labgate/labgate.toml"], check=True)
    subprocess.run(["chown", f"{user}:{user}", root / "var/lib/labgate"], check=True)
    data_dir = root / "var/lib/labgate"
    # The installed config unchanged: external_address "auto" is the default route's address, so the gateway
    # namespace gets one; only data_dir is moved into the staged tree, as a drop-in's Environment= would.
    subprocess.run(["ip", "-n", lab.gateway_ns, "route", "add", "default", "via", lab.client_address], check=True)
    env = {"LABGATE_DATA_DIR": str(data_dir)}
    config = root / "etc/labgate/labgate.toml"
    # The first token as install's advice says: as the user, so that the database stays its own.
    made = subprocess.run(["runuser", "-u", user, "--", runtime.labgate, "token", "create", "admin", "--admin",
                           "--config", str(config)], capture_output=True, text=True, env={**os.environ, **env},
                          cwd="/")
    token = Ran(made.returncode, made.stdout, made.stderr).ok().stdout.strip()

    policy = unit_sandbox.policy(root / "etc/systemd/system/labgate.service", root, runtime.python, env)
    assert policy["argv"] == [runtime.labgate, "serve", "--config", str(config)]
    policy_file = shared_dir / "policy.json"
    policy_file.write_text(json.dumps(policy))
    argv, proc_env = unit_sandbox.command(policy_file, lab.gateway_ns)
    log = shared_dir / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=proc_env, stdout=out, stderr=subprocess.STDOUT, cwd="/")
    try:
        healthz = lambda: httpx.get(API + "/healthz", timeout=2).is_success  # noqa: E731
        wait_until("/healthz", lambda: in_netns(lab.gateway_ns, healthz), proc, log)
        # The process is the user's, with exactly the unit's two capabilities, and cannot gain more.
        uid = str(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout.strip())
        fields = status(proc.pid)
        assert "serve" in Path(f"/proc/{proc.pid}/cmdline").read_text()
        assert fields["Uid"].split() == [uid] * 4
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == NET_ADMIN_AND_RAW, (cap, fields[cap])
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        # ProtectSystem=strict with ReadWritePaths: / read-only, the data folder read-write.
        mounts = {line.split()[4]: line.split()[5].split(",") for line in
                  Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()}
        assert "ro" in mounts["/"] and "rw" in mounts[str(data_dir)], mounts

        m1 = lab.machine_addresses[0]
        with Service.start_tcp_echo(lab.lab_ns, m1, 22, tag="vm1"):
            created = api(lab.gateway_ns, "POST", "/api/v1/forwards", token,
                          json={"target_address": m1, "target_port": 22, "name": "vm1"})
            assert created.status_code == 201, created.text
            fwd = created.json()
            assert (fwd["external_address"], fwd["external_port"]) == (lab.external_address, 4000)
            assert tcp_request(lab.client_ns, lab.external_address, 4000, "hi") == "vm1:hi"
            # conntrack -E runs as the user too: the connection is an event.
            events = wait_until("connection event", lambda: (tcp_request(lab.client_ns, lab.external_address, 4000,
                                                                         "again") and
                                                             api(lab.gateway_ns, "GET", "/api/v1/events", token,
                                                                 params={"kind": "connection"}).json()["results"]),
                                proc, log)
            assert events[0]["fields"]["forward_id"] == fwd["id"]
        [gw] = api(lab.gateway_ns, "GET", "/api/v1/gateways", token).json()
        assert (gw["status"], gw["problems"]) == ("ok", []), gw
        # What labgate runs (conntrack -E, at least) inherits the two capabilities and nothing else.
        started = children(proc.pid)
        assert any("conntrack" in f["Name"] for f in started.values()), started
        for fields in started.values():
            assert fields["Uid"].split() == [uid] * 4 and int(fields["CapEff"], 16) == NET_ADMIN_AND_RAW, fields
        # Everything labgate wrote is in its data folder, the user's and private.
        for path in data_dir.iterdir():
            st = path.stat()
            assert (str(st.st_uid), st.st_mode & 0o077) == (uid, 0), path
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_install_and_uninstall_refuse_to_change_the_machine_without_root(shared_dir: Path) -> None:
    runtime = runtime_for("nobody", shared_dir)
    for command in ("install", "uninstall"):
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", runtime.labgate,
                               command], capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
        ran = Ran(proc.returncode, proc.stdout, proc.stderr)
        message, hint = assert_cli_error(ran, 1, f"{command} changes this machine and needs root")
        assert "--root DIR" in hint


# Run by test_install_on_this_machine in a mount namespace of its own: /etc is a copy (useradd writes the copy's
# passwd and group), /var/lib and /var/log are empty tmpfs, so the host sees none of it.
_PRIVATE_MACHINE = r'''
import json, os, subprocess, sys
copy, user = sys.argv[1], sys.argv[2]
subprocess.run(["cp", "-a", "/etc/.", copy], check=True)
subprocess.run(["mount", "--bind", copy, "/etc"], check=True)
for path in ("/var/lib", "/var/log"):
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)

def labgate(*args):
    p = subprocess.run([sys.executable, "-m", "labgate", *args], capture_output=True, text=True, cwd="/")
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}

def state():
    found = {}
    for path in ("/etc/labgate", "/etc/labgate/labgate.toml", "/var/lib/labgate",
                 "/etc/systemd/system/labgate.service", "/etc/systemd/system/labgate-agent.service"):
        try:
            st = os.stat(path)
            found[path] = [oct(st.st_mode & 0o7777), st.st_uid, st.st_gid]
        except FileNotFoundError:
            pass
    passwd = subprocess.run(["getent", "passwd", user], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["getent", "group", user], capture_output=True, text=True).stdout.strip()
    return {"files": found, "passwd": passwd, "group": group}

steps = []
for args in (["install", "--user", user], ["install", "--user", user], ["uninstall"], ["install", "--user", user],
             ["uninstall", "--purge"]):
    steps.append({"args": args, **labgate(*args), **state()})
print(json.dumps(steps))
'''


def test_install_on_this_machine_and_uninstall(shared_dir: Path) -> None:
    """Without --root, in a private copy of the machine: the user made, files given to it, nothing changed the
    second time, the user removed by uninstall (the config and the database kept), everything gone with --purge."""
    user = "lgtest" + os.urandom(4).hex()
    copy = shared_dir / "etc"
    copy.mkdir()
    ran = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _PRIVATE_MACHINE,
                          str(copy), user], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    first, second, removed, again, purged = json.loads(ran.stdout)
    for step in (first, second, removed, again, purged):
        assert step["rc"] == 0, step
    entry = first["passwd"].split(":")
    assert entry[0] == user and entry[4] == install.USER_COMMENT and entry[5] == "/var/lib/labgate"
    assert entry[6].endswith("nologin") and first["group"].startswith(f"{user}:")
    uid, gid = int(entry[2]), int(entry[3])
    assert first["files"] == {
        "/etc/labgate": ["0o750", 0, gid], "/etc/labgate/labgate.toml": ["0o640", 0, gid],
        "/var/lib/labgate": ["0o700", uid, gid],
        "/etc/systemd/system/labgate.service": ["0o644", 0, 0],
        "/etc/systemd/system/labgate-agent.service": ["0o644", 0, 0]}
    assert f"created    user {user}" in first["out"] and "runuser -u " + user in first["out"]
    # Nothing changes the second time.
    assert {line.split()[0] for line in second["out"].split("\n\n")[0].splitlines()} == {"unchanged"}
    assert second["files"] == first["files"] and second["passwd"] == first["passwd"]
    # uninstall: units and user gone (the user named by the unit), config and database kept.
    assert removed["passwd"] == removed["group"] == ""
    assert set(removed["files"]) == {"/etc/labgate", "/etc/labgate/labgate.toml", "/var/lib/labgate"}
    assert f"removed    user {user}" in removed["out"] and "(--purge removes them)" in removed["out"]
    # Installed again, the kept files are the new user's.
    new_uid, new_gid = (int(x) for x in again["passwd"].split(":")[2:4])
    assert again["files"]["/var/lib/labgate"] == ["0o700", new_uid, new_gid]
    assert again["files"]["/etc/labgate/labgate.toml"] == ["0o640", 0, new_gid]
    assert purged["files"] == {} and purged["passwd"] == ""
