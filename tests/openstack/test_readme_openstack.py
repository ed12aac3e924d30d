"""The README's OpenStack section, run as written: its [openstack] block (pointed at the test Neutron) in a real
`labgate serve`, then its commands literally, placeholders filled: `labgate token create alice --project <project
id>`, `labgate forward add port:<port id> 22`, `labgate openstack status`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from labgate.config import router_gateway_name
from tests.cli.conftest import Cli
from tests.harness import free_port, stop_process

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    return text[text.index("### OpenStack"):text.index("### vLab clients")]


def command(text: str, start: str) -> str:
    """The README's `...` command that starts with `start`, as written."""
    found = re.search(r"`(" + re.escape(start) + r"[^`]*)`", text.replace("\n", " "))
    assert found, f"the README no longer shows `{start}...`"
    return found.group(1)


def test_the_readme_openstack_section_works_as_written(neutron, tmp_path: Path) -> None:
    text = section()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    topo = neutron.project_topology(cidr="10.46.0.0/24", name="readme")
    port = neutron.vm_port(topo, "10.46.0.5")
    api_port = free_port()
    config = tmp_path / "labgate.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{api_port}"\ndatabase = "sqlite:///{tmp_path}/lg.db"\ndataplane = "none"\n'
        + block.replace('cloud = "mycloud"', f'cloud = "{neutron.cloud}"')
        + f'clouds_file = "{neutron.clouds_yaml}"\nprojects = ["{topo.project_id}"]\n')
    cli = Cli(home=tmp_path, config=tmp_path / "client.toml", bindir=tmp_path)
    server = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"),
                              env=cli.env())
    try:
        url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "labgate serve did not answer"
            time.sleep(0.2)

        create = command(text, "labgate token create").replace("<project id>", topo.project_id).split()
        token = cli(*create[1:], "--config", str(config)).ok().stdout.strip()
        cli.configure(url, token)
        add = command(text, "labgate forward add port:").replace("<port id>", port.id).split()
        deadline = time.monotonic() + 60
        while (out := cli(*add[1:], "-o", "json")).returncode != 0:  # until the monitor's first look is in
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
        made = out.json()
        assert (made["gateway"], made["target_address"], made["target_port"], made["target_port_id"]) == (
            router_gateway_name(topo.router.id), "10.46.0.5", 22, port.id)
        status = cli(*command(text, "labgate openstack status").split()[1:]).ok().stdout
        assert f"cloud {neutron.cloud}" in status and "api calls" in status
    finally:
        stop_process(server)
