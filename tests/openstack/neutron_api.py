"""A real OpenStack Neutron API for tests (no Keystone, no RabbitMQ, no agents), run from its own venv.

- `ensure_venv()` builds .venv-neutron at the repository root from tests/openstack/neutron-requirements.txt (pinned
  neutron==29.0.0 and what it pulls in; its pins clash with labgate's, so it never goes into .venv). Built once
  (~100 s), rebuilt when the requirements file or the Python version changes (their hash is stored in the venv),
  under a lock so that two pytest processes never build it at once. LG_NEUTRON_VENV=DIR puts it elsewhere.
- `NeutronServer` writes Neutron's configuration (auth_strategy = noauth, ML2 with flat/vlan/vxlan and no mechanism
  driver, the router service plugin, overlapping IPs, flat networks on any physical network), builds the schema in a
  SQLite file (create_all + `stamp heads`: the migrations themselves only run on MySQL) and serves the WSGI app with
  tests/openstack/neutron_host.py, a subprocess in the Neutron venv on a free loopback port. It writes a clouds.yaml
  for openstacksdk and has helpers for the usual topology: external flat network, project router with its gateway on
  it, internal network attached to the router, "VM" ports (device_owner compute:nova), and a VM's deletion done
  the way Nova does it.

Identity: a request without X-Project-Id is admin (project `fake_project_id`); with `X-Project-Id: P` it is a
non-admin member of project P (see neutron_host.py: Neutron's own noauth pipeline ignores that header).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.harness import stop_process

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQUIREMENTS = HERE / "neutron-requirements.txt"
HOST = HERE / "neutron_host.py"
STAMP_NAME = ".labgate-requirements.sha256"
CLOUD = "labgate-test"
ADMIN_PROJECT = "fake_project_id"  # what Neutron's noauth gives a request without X-Project-Id
EXTERNAL_CIDR = "198.51.100.0/24"  # TEST-NET-2: never routed anywhere

Progress = Callable[[str], None]


class VenvError(RuntimeError):
    """The Neutron venv could not be built (a prerequisite: skips outside CI, fails in CI)."""


def venv_dir() -> Path:
    override = os.environ.get("LG_NEUTRON_VENV")
    return Path(override).resolve() if override else REPO / ".venv-neutron"


def requirements_hash() -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(f"python{sys.version_info.major}.{sys.version_info.minor}".encode())
    return h.hexdigest()


def _venv_ready(venv: Path, wanted: str) -> bool:
    stamp = venv / STAMP_NAME
    python = venv / "bin" / "python"
    if not stamp.is_file() or stamp.read_text().strip() != wanted or not python.exists():
        return False
    return subprocess.run([str(python), "-c", "pass"], capture_output=True, timeout=60).returncode == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def ensure_venv(progress: Progress = print, *, timeout: float = 1800) -> Path:
    """The Neutron venv's python, building the venv first when it is missing or out of date."""
    venv = venv_dir()
    wanted = requirements_hash()
    # The lock lives outside the venv, which a rebuild deletes; one per venv path.
    lock_path = Path(tempfile.gettempdir()) / f"labgate-venv-neutron-{hashlib.sha256(bytes(venv)).hexdigest()[:12]}"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another test run that is building {venv} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_ready(venv, wanted):
            return venv / "bin" / "python"
        _build_venv(venv, wanted, progress, timeout)
        return venv / "bin" / "python"


def _build_venv(venv: Path, wanted: str, progress: Progress, timeout: float) -> None:
    rel = venv.relative_to(REPO) if venv.is_relative_to(REPO) else venv
    stamp = venv / STAMP_NAME
    if not venv.exists():
        why = "first run"
    elif stamp.is_file():
        why = "its requirements or Python changed: rebuilding"
    else:
        why = "an earlier build did not finish: rebuilding"
    progress(f"building the Neutron venv {rel} from {REQUIREMENTS.relative_to(REPO)} ({why}; takes about 100 s, "
             "once; its packages are downloaded from the package index)")
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    if r.returncode:
        shutil.rmtree(venv, ignore_errors=True)
        raise VenvError(f"cannot create the Neutron venv {venv} with `{sys.executable} -m venv` "
                        f"(Debian: apt-get install python3-venv): {r.stderr.strip()[-2000:]}")
    log = venv / "pip-install.log"
    with open(log, "w") as out:
        pip = subprocess.Popen([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                                "--progress-bar", "off", "-r", str(REQUIREMENTS)],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            try:
                code = pip.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    stop_process(pip)
                    raise VenvError(f"pip install into {venv} took over {timeout:.0f} s; log: {log}\n{_tail(log)}")
                progress(f"... still installing Neutron's packages ({elapsed:.0f} s)")
    if code:
        raise VenvError(f"pip install -r {REQUIREMENTS.name} into {venv} failed (exit {code}); log: {log}\n"
                        f"{_tail(log)}")
    (venv / STAMP_NAME).write_text(wanted + "\n")  # last: an interrupted build is rebuilt next time
    progress(f"Neutron venv ready in {time.monotonic() - started:.0f} s")


# --- the server ---------------------------------------------------------------------------------------------------

# No api_paste_config (deprecated for removal): Neutron finds api-paste.ini beside its --config-file files, where
# _write_config() copies the venv's etc/neutron/api-paste.ini.
NEUTRON_CONF = """\
[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = noauth
transport_url = fake:/
state_path = {root}/state
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
allow_overlapping_ips = true
debug = false

[database]
connection = sqlite:///{root}/neutron.sqlite

[oslo_messaging_notifications]
driver = noop

[oslo_concurrency]
lock_path = {root}/lock
"""

ML2_CONF = """\
[ml2]
type_drivers = flat,vlan,vxlan
project_network_types = vxlan
mechanism_drivers =
extension_drivers = port_security

[ml2_type_vxlan]
vni_ranges = 1:1000

[ml2_type_flat]
flat_networks = *
"""


@dataclass
class ExternalNetwork:
    network: Any  # openstack.network.v2.network.Network
    subnet: Any


@dataclass
class ProjectTopology:
    project_id: str
    router: Any
    network: Any
    subnet: Any
    router_port: Any  # device_owner network:router_interface, the subnet's gateway address


class NeutronServer:
    """One Neutron API process; `start()` then `stop()` (idempotent). See the module's docstring."""

    def __init__(self, root: Path, python: Path, *, extra_conf: str = "") -> None:
        self.root = root
        self.python = python
        self.extra_conf = extra_conf  # more neutron.conf text (e.g. "[DEFAULT]\npagination_max_limit = 2\n")
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = root / "neutron.log"
        self.clouds_yaml = root / "clouds.yaml"
        self.cloud = CLOUD
        self.timings: dict[str, float] = {}
        self._admin = None
        self._external: ExternalNetwork | None = None

    # --- lifecycle ---

    @property
    def endpoint(self) -> str:
        assert self.port, "not started"
        return f"http://127.0.0.1:{self.port}/"

    def _config_args(self) -> list[str]:
        extra = ["--config-file", str(self.root / "extra.conf")] if self.extra_conf else []
        return ["--config-file", str(self.root / "neutron.conf"), "--config-file", str(self.root / "ml2_conf.ini"),
                *extra]

    def _write_config(self) -> None:
        for d in ("state", "lock"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "neutron.conf").write_text(NEUTRON_CONF.format(root=self.root))
        (self.root / "ml2_conf.ini").write_text(ML2_CONF)
        if self.extra_conf:
            (self.root / "extra.conf").write_text(self.extra_conf)
        paste = self.python.parent.parent / "etc" / "neutron" / "api-paste.ini"
        shutil.copyfile(paste, self.root / "api-paste.ini")

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def start(self, *, timeout: float = 180) -> None:
        self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON"))}
        env["OS_NEUTRON_CONFIG_DIR"] = str(self.root)  # never /etc/neutron
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            r = subprocess.run([str(self.python), "-I", str(HOST), "schema", *self._config_args()], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                               timeout=timeout)
        self.timings["schema"] = time.monotonic() - t0
        if r.returncode:
            raise RuntimeError(f"Neutron schema creation failed (exit {r.returncode}); log {self.log_path}:\n"
                               f"{self.log_tail()}")
        port_file = self.root / "port"
        t1 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.python), "-I", str(HOST), "serve", "--port", "0", "--port-file", str(port_file),
                 *self._config_args()],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root)
        deadline = t1 + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Neutron API exited (code {self.process.returncode}) before answering; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Neutron API did not answer within {timeout:.0f} s; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if self.port is None and port_file.exists():
                self.port = int(port_file.read_text())
            if self.port is not None and self._answers():
                break
            time.sleep(0.2)
        self.timings["serve"] = time.monotonic() - t1
        self._write_clouds_yaml()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}v2.0/networks?limit=1", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _write_clouds_yaml(self) -> None:
        self.clouds_yaml.write_text(
            "clouds:\n"
            f"  {self.cloud}:\n"
            "    auth_type: none\n"
            f"    network_endpoint_override: {self.endpoint}\n")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        stop_process(self.process)

    # --- clients ---

    def connect(self, project_id: str | None = None, *, roles: str | None = None, service: bool = False):
        """An openstacksdk Connection from the clouds.yaml: admin, or a member of `project_id` (X-Project-Id header;
        `roles` sets X-Roles, default member,reader; `service` adds X-Service-Roles: service, as when Nova calls
        Neutron for a user with its service token). Close it (or use it as a context manager) when done."""
        import openstack.config
        import openstack.connection

        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)], vendor_files=[],
                                                  secure_files=[], load_envvars=False)
        conn = openstack.connection.Connection(config=config.get_one(cloud=self.cloud))
        headers = conn.session.additional_headers
        if project_id is not None:
            headers["X-Project-Id"] = project_id
            if roles is not None:
                headers["X-Roles"] = roles
            if service:
                headers["X-Service-Roles"] = "service"
        elif roles is not None or service:
            raise ValueError("roles and service need a project_id (without one the connection is admin)")
        return conn

    def admin(self):
        """A shared admin Connection (closed by stop())."""
        if self._admin is None:
            self._admin = self.connect()
        return self._admin

    def project(self, project_id: str, *, roles: str | None = None):
        """A Connection acting as a (non-admin) member of `project_id`."""
        return self.connect(project_id, roles=roles)

    def nova(self, project_id: str):
        """A Connection acting as Nova for a user of `project_id`: Neutron 29's policy lets a project member create
        a compute:nova port but not delete it; Nova, with the service role, can."""
        return self.connect(project_id, service=True)

    @staticmethod
    def new_project_id() -> str:
        return uuid.uuid4().hex

    # --- topology ---

    def external_network(self) -> ExternalNetwork:
        """The flat external network (198.51.100.0/24, no DHCP), created once per server."""
        if self._external is None:
            conn = self.admin()
            net = conn.network.create_network(name="ext-net", is_router_external=True, provider_network_type="flat",
                                              provider_physical_network="physnet-ext", is_shared=False)
            subnet = conn.network.create_subnet(network_id=net.id, name="ext-subnet", ip_version=4,
                                                cidr=EXTERNAL_CIDR, gateway_ip="198.51.100.1", is_dhcp_enabled=False,
                                                allocation_pools=[{"start": "198.51.100.10",
                                                                   "end": "198.51.100.250"}])
            self._external = ExternalNetwork(net, subnet)
        return self._external

    def project_topology(self, project_id: str | None = None, *, cidr: str = "10.0.0.0/24",
                         name: str = "lab") -> ProjectTopology:
        """Created by the project itself: a router with its gateway on the external network, an internal network and
        subnet (`cidr`, gateway .1) attached to it."""
        project_id = project_id or self.new_project_id()
        ext = self.external_network()
        with self.project(project_id) as conn:
            router = conn.network.create_router(name=f"{name}-router",
                                                external_gateway_info={"network_id": ext.network.id})
            net = conn.network.create_network(name=f"{name}-net")
            subnet = conn.network.create_subnet(network_id=net.id, name=f"{name}-subnet", ip_version=4, cidr=cidr)
            conn.network.add_interface_to_router(router, subnet=subnet.id)
            (router_port,) = conn.network.ports(device_id=router.id, device_owner="network:router_interface")
            router = conn.network.get_router(router.id)
        return ProjectTopology(project_id, router, net, subnet, router_port)

    def vm_port(self, topology: ProjectTopology, ip: str | None = None, *, device_id: str | None = None,
                name: str | None = None):
        """A port as Nova makes it for a VM: device_owner compute:nova, device_id the VM's uuid, in the topology's
        subnet at `ip` (or the next free address), owned by the topology's project."""
        fixed_ip = {"subnet_id": topology.subnet.id}
        if ip is not None:
            fixed_ip["ip_address"] = ip
        device_id = device_id or str(uuid.uuid4())
        with self.nova(topology.project_id) as conn:
            return conn.network.create_port(network_id=topology.network.id, name=name or f"vm-{device_id[:8]}",
                                            device_id=device_id, device_owner="compute:nova", fixed_ips=[fixed_ip])

    def delete_vm(self, project_id: str, device_id: str, *, keep: tuple[str, ...] = ()) -> None:
        """What Nova does to a VM's ports when the VM is deleted: ports it created are deleted; ports the user
        created and handed to it (ids in `keep`) are kept, with device_id and device_owner cleared."""
        with self.nova(project_id) as conn:
            for port in list(conn.network.ports(device_id=device_id)):
                if port.id in keep:
                    conn.network.update_port(port.id, device_id="", device_owner="")
                else:
                    conn.network.delete_port(port.id)
