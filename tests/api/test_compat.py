"""The vLab compatibility API (/api/1/ipam/*, /api/1/quota): requests shaped exactly as vlab-cli 2021.3.2 sends
them (requests with `params=` for GET, `json=` for POST/DELETE, the token in X-Auth, its User-Agent and
X-REQUEST-ID), against a real server over real HTTP on a real SQLite file. Tokens are minted here with PyJWT, with
the claims the vLab auth service put in its v2 tokens, and keys this test writes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from labgate.config import CompatConfig, ConfigError, GatewayConfig, ServerConfig, Settings, load_settings
from tests.api.conftest import FORWARDS, Api, db_count, db_file, db_rows, gw
from tests.harness import RawConnection, Server, running_server

PORTMAP = "/api/1/ipam/portmap"
ADDR = "/api/1/ipam/addr"
HEALTH = "/api/1/ipam/healthcheck"
QUOTA = "/api/1/quota"
ISSUER = "https://vlab.example.test"
GATEWAY_IP = "198.51.100.1"
CLI_AGENT = "vLab CLI 2021.3.2"


# --- keys and tokens --------------------------------------------------------------------------------------------
@dataclass
class Keys:
    hs_secret: bytes
    hs_file: Path
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: bytes
    rs_file: Path
    other_rsa_private: rsa.RSAPrivateKey
    private_pem_file: Path


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048),
            rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def keys(tmp_path: Path, rsa_pair: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Keys:
    secret = secrets.token_urlsafe(48).encode()
    hs_file = tmp_path / "vlab-hs256.key"
    # The secret without a trailing newline: whether a newline in the file is part of the key is settled (and
    # tested) in test_compat_setup.py with vLab's own way of writing the file; these tests are about the API.
    hs_file.write_bytes(secret)
    hs_file.chmod(0o600)
    private, other = rsa_pair
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    rs_file = tmp_path / "vlab-rs256.pub"
    rs_file.write_bytes(public_pem)
    private_pem_file = tmp_path / "vlab-rs256.pem"
    private_pem_file.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return Keys(secret, hs_file, private, public_pem, rs_file, other, private_pem_file)


def claims(username: str | None = "alice", *, iss: str | None = ISSUER, exp_in: float | None = 3600,
           **extra: Any) -> dict[str, Any]:
    """The claims of a vLab v2 token (vlab_api_common): exp, iat, iss, username, version, client_ip, email."""
    now = int(time.time())
    out: dict[str, Any] = {"iat": now, "version": 2, "client_ip": "127.0.0.1"}
    if exp_in is not None:
        out["exp"] = now + int(exp_in)
    if iss is not None:
        out["iss"] = iss
    if username is not None:
        out["username"] = username
        out["email"] = f"{username}@vlab.local"
    out.update(extra)
    return out


def vlab_test_key_token(username: str) -> str:
    """A token signed with the key vlab_api_common fell back to when not in production: "testing"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT rightly warns that a 7-byte HMAC key is too short
        return jwt.encode(claims(username), "testing", algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to make the forgeries we test): HS256 over `key`, or no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key is not None else ""
    return f"{signing_input}.{sig}"


# --- a server with [compat] ------------------------------------------------------------------------------------
def compat_settings(url: str, compat: CompatConfig, gateways: list[GatewayConfig] | None = None) -> Settings:
    return Settings(server=ServerConfig(database=url, dataplane="none"),
                    gateway=gateways or [gw("default", external_address=GATEWAY_IP)], compat=compat)


def hs_compat(keys: Keys, **kw: Any) -> CompatConfig:
    return CompatConfig(vlab_enabled=True, jwt_algorithm="HS256", jwt_key_file=str(keys.hs_file),
                        jwt_issuer=ISSUER, **kw)


@dataclass
class Vlab:
    """A running labgate with the vLab API on, and the means to speak to it as vlab-cli does."""

    server: Server
    url: str
    keys: Keys
    algorithm: str
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, username: str | None = "alice", **kw: Any) -> str:
        key: Any = self.keys.hs_secret if self.algorithm == "HS256" else self.keys.rsa_private
        return jwt.encode(claims(username, **kw), key, algorithm=self.algorithm)

    def sign(self, payload: dict[str, Any]) -> str:
        key: Any = self.keys.hs_secret if self.algorithm == "HS256" else self.keys.rsa_private
        return jwt.encode(payload, key, algorithm=self.algorithm)

    def cli(self, username: str = "alice", token: str | None = None) -> httpx.Client:
        """A session with vlab-cli's headers (vlab_cli.lib.api.vLabApi)."""
        c = httpx.Client(base_url=self.server.url, timeout=30, headers={
            "X-Auth": token if token is not None else self.token(username),
            "User-Agent": CLI_AGENT, "X-REQUEST-ID": uuid.uuid4().hex})
        self.clients.append(c)
        return c

    def raw(self, local_address: str | None = None) -> httpx.Client:
        """A session without a token; `local_address` (e.g. 127.0.0.9) is the address its connections come from."""
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        c = httpx.Client(base_url=self.server.url, timeout=30, headers={"User-Agent": CLI_AGENT}, transport=transport)
        self.clients.append(c)
        return c

    def v1(self, owner: str) -> httpx.Client:
        c = self.server.client(self.server.token(owner))
        self.clients.append(c)
        return c


@contextmanager
def vlab_server(url: str, keys: Keys, compat: CompatConfig,
                gateways: list[GatewayConfig] | None = None) -> Iterator[Vlab]:
    with ExitStack() as stack:
        srv = stack.enter_context(running_server(compat_settings(url, compat, gateways)))
        v = Vlab(srv, url, keys, compat.jwt_algorithm or "")
        try:
            yield v
        finally:
            for c in v.clients:
                c.close()


@pytest.fixture
def vlab(database_url: str, keys: Keys) -> Iterator[Vlab]:
    """HS256 shared secret, issuer checked, gateway "default" at 198.51.100.1, ports 4000-4100, 10.9.0.0/24."""
    with vlab_server(database_url, keys, hs_compat(keys)) as v:
        yield v


@pytest.fixture
def vlab_rs(database_url: str, keys: Keys) -> Iterator[Vlab]:
    compat = CompatConfig(vlab_enabled=True, jwt_algorithm="RS256", jwt_key_file=str(keys.rs_file),
                          jwt_issuer=ISSUER)
    with vlab_server(database_url, keys, compat) as v:
        yield v


def ok(resp: httpx.Response, params: dict[str, str] | None = None) -> dict[str, Any]:
    """A success in the original's envelope: 200, error null, the query echoed in params; returns content."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "content", "params"}, body
    assert body["error"] is None, body
    assert body["params"] == (params or {}), body
    assert isinstance(body["content"], dict)
    return body["content"]


def failed(resp: httpx.Response, status: int, *words: str) -> str:
    """A failure in the envelope: the status, a non-empty error string, empty content; returns the error."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    body = resp.json()
    assert set(body) == {"error", "content", "params"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["content"] == {}, body
    for w in words:
        assert w.lower() in body["error"].lower(), (w, body["error"])
    return body["error"]


def delete(client: httpx.Client, body: Any = None, **kw: Any) -> httpx.Response:
    # requests.Session.delete(url, json=...) - httpx spells it request("DELETE", ...)
    return client.request("DELETE", PORTMAP, json=body, **kw)


def map_port(client: httpx.Client, addr: str, port: int, name: str, component: str) -> int:
    """What vlab-cli does right after creating a VM (create/<kind>.py) and in `vlab create portmap`."""
    content = ok(client.post(PORTMAP, json={"target_addr": addr, "target_port": port, "target_name": name,
                                            "target_component": component}))
    assert set(content) == {"conn_port"} and isinstance(content["conn_port"], int)
    return content["conn_port"]


def connect_lookup(client: httpx.Client, name: str, target_port: int) -> tuple[str | None, str]:
    """`vlab connect <kind> --name N --protocol P`: GET portmap?name=N&target_port=<port>, first conn_port and
    gateway_ip, exactly as vlab_cli/subcommands/connect/*.py read them."""
    resp = client.get(PORTMAP, params={"name": name, "target_port": target_port})
    content = ok(resp, {"name": name, "target_port": str(target_port)})
    try:
        conn_port = list(content["ports"].keys())[0]
    except IndexError:
        conn_port = None
    return conn_port, content["gateway_ip"]


# --- not configured -> not served ----------------------------------------------------------------------------
def test_not_configured_means_not_served_with_any_token(api: Api) -> None:
    """Without [compat] the routes do not exist: a token signed with vLab's built-in test key ("testing") or
    any other gets the same 404 as no token, and nothing is created."""
    forged = vlab_test_key_token("alice")
    before = db_rows(api.url)
    for headers in ({}, {"X-Auth": forged}):
        for method, path, body in (("GET", PORTMAP, None), ("POST", PORTMAP, {
                "target_addr": "10.9.0.5", "target_port": 22, "target_name": "c1", "target_component": "CentOS"}),
                ("DELETE", PORTMAP, {"conn_port": 4000}), ("GET", ADDR, None), ("GET", HEALTH, None),
                ("GET", QUOTA, None)):
            resp = api.anon.request(method, path, json=body, headers=headers)
            assert resp.status_code == 404, (method, path, resp.text)
            assert "10.9.0.5" not in resp.text
    assert db_rows(api.url) == before
    assert not [p for p in api.anon.get("/openapi.json").json()["paths"] if p.startswith("/api/1/")]


def test_default_settings_have_compat_off() -> None:
    s = Settings()
    assert s.compat.vlab_enabled is False and s.compat.jwt_key_file is None and s.compat.owner_claim == "username"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labgate.toml"
    p.write_text(text)
    return p


def test_config_file_enables_compat(tmp_path: Path, keys: Keys) -> None:
    s = load_settings(write(tmp_path, f'''
[[gateway]]
name = "default"
external_address = "198.51.100.1"

[compat]
vlab_enabled = true
jwt_algorithm = "RS256"
jwt_key_file = "{keys.rs_file}"
jwt_issuer = "{ISSUER}"
owner_claim = "username"
'''))
    assert s.compat.vlab_enabled and s.compat.jwt_algorithm == "RS256" and s.compat_gateway.name == "default"


@pytest.mark.parametrize("section, words", [
    ("vlab_enabled = true\n", "no built-in key"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_issuer = "x"\n', "jwt_key_file"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{hs}"\n', "jwt_issuer"),
    ('vlab_enabled = true\njwt_algorithm = "none"\njwt_key_file = "{hs}"\njwt_issuer = "x"\n', "jwt_algorithm"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{short}"\njwt_issuer = "x"\n', "at least 32"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{pub}"\njwt_issuer = "x"\n', "PEM"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{missing}"\njwt_issuer = "x"\n', "cannot be read"),
    ('vlab_enabled = true\njwt_algorithm = "RS256"\njwt_key_file = "{priv}"\njwt_issuer = "x"\n', "public key"),
    ('vlab_enabled = true\njwt_algorithm = "RS256"\njwt_key_file = "{hs}"\njwt_issuer = "x"\n', "public key"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{hs}"\njwt_issuer = "x"\ngateway = "nope"\n',
     "not one of the [[gateway]]"),
    ('vlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{hs}"\njwt_issuer = "x"\nbogus = 1\n', "bogus"),
])
def test_bad_compat_config_says_what_is_wrong(tmp_path: Path, keys: Keys, section: str, words: str) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"testing\n")  # vLab's built-in test key is refused: far too short
    text = '[[gateway]]\nname = "default"\n\n[compat]\n' + section.format(
        hs=keys.hs_file, short=short, pub=keys.rs_file, priv=keys.private_pem_file, missing=tmp_path / "nope")
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text))


def test_compat_gateway_must_be_named_when_there_are_several(tmp_path: Path, keys: Keys) -> None:
    text = (f'[[gateway]]\nname = "lab1"\n[[gateway]]\nname = "lab2"\nexternal_address = "198.51.100.2"\n\n'
            f'[compat]\nvlab_enabled = true\njwt_algorithm = "HS256"\njwt_key_file = "{keys.hs_file}"\n'
            f'jwt_issuer = "{ISSUER}"\n')
    with pytest.raises(ConfigError, match="compat.gateway"):
        load_settings(write(tmp_path, text))
    s = load_settings(write(tmp_path, text + 'gateway = "lab2"\n'))
    assert s.compat_gateway.name == "lab2"


# --- happy paths ------------------------------------------------------------------------------------------------
def test_create_list_delete_round_trip_in_the_original_shapes(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    assert ok(cli.get(PORTMAP)) == {"ports": {}, "gateway_ip": GATEWAY_IP}

    resp = cli.post(PORTMAP, json={"target_addr": "10.9.0.5", "target_port": 22, "target_name": "centos1",
                                   "target_component": "CentOS"})
    assert resp.status_code == 200  # the original answered 200, not 201
    assert resp.json() == {"error": None, "content": {"conn_port": 4000}, "params": {}}

    listing = ok(cli.get(PORTMAP))
    assert listing == {"ports": {"4000": {"name": "centos1", "target_addr": "10.9.0.5", "target_port": 22,
                                          "component": "CentOS"}},
                       "gateway_ip": GATEWAY_IP}

    resp = delete(cli, {"conn_port": 4000})
    assert resp.json() == {"error": None, "content": {}, "params": {}} and resp.status_code == 200
    assert ok(cli.get(PORTMAP)) == {"ports": {}, "gateway_ip": GATEWAY_IP}
    assert db_count(vlab.url) == 0 and db_count(vlab.url, "port_allocations") == 0
    failed(delete(cli, {"conn_port": 4000}), 404, "No such port mapping record")


def test_vlab_connect_flow(vlab: Vlab) -> None:
    """vlab-cli creates the SSH and HTTPS maps after `vlab create insightiq`, RDP after `vlab create windows`;
    `vlab connect` then looks the port up by name and target port."""
    cli = vlab.cli("alice")
    ssh = map_port(cli, "10.9.0.5", 22, "iiq1", "InsightIQ")
    https = map_port(cli, "10.9.0.5", 443, "iiq1", "InsightIQ")
    rdp = map_port(cli, "10.9.0.7", 3389, "win1", "Windows")
    onefs_https = map_port(cli, "10.9.0.20", 8080, "isi01", "OneFS")  # OneFS serves HTTPS on 8080
    assert len({ssh, https, rdp, onefs_https}) == 4

    assert connect_lookup(cli, "iiq1", 22) == (str(ssh), GATEWAY_IP)
    assert connect_lookup(cli, "iiq1", 443) == (str(https), GATEWAY_IP)
    assert connect_lookup(cli, "win1", 3389) == (str(rdp), GATEWAY_IP)
    assert connect_lookup(cli, "isi01", 8080) == (str(onefs_https), GATEWAY_IP)
    # no such rule: the client says "No mapping rule for ssh to win1 exists"
    assert connect_lookup(cli, "win1", 22) == (None, GATEWAY_IP)
    assert connect_lookup(cli, "nobody", 22) == (None, GATEWAY_IP)

    # two maps to the same name and port (the original never de-duplicated): the oldest comes first
    again = map_port(cli, "10.9.0.5", 22, "iiq1", "InsightIQ")
    assert again != ssh
    content = ok(cli.get(PORTMAP, params={"name": "iiq1", "target_port": 22}),
                 {"name": "iiq1", "target_port": "22"})
    assert list(content["ports"]) == [str(ssh), str(again)]


def test_vlab_delete_flow_removes_every_map_of_a_machine(vlab: Vlab) -> None:
    """`vlab delete <kind> --name N`: GET portmap?name=N, then DELETE {"conn_port": int(port)} for each key."""
    cli = vlab.cli("alice")
    for port in (22, 443):
        map_port(cli, "10.9.0.5", port, "iiq1", "InsightIQ")
    keep = map_port(cli, "10.9.0.7", 3389, "win1", "Windows")
    all_ports = ok(cli.get(PORTMAP, params={"name": "iiq1"}), {"name": "iiq1"})["ports"]
    assert len(all_ports) == 2
    for port in all_ports.keys():
        ok(delete(cli, {"conn_port": int(port)}))
    assert list(ok(cli.get(PORTMAP))["ports"]) == [str(keep)]


def test_vlab_delete_portmap_with_override_port_sends_target_port_zero(vlab: Vlab) -> None:
    """`vlab delete portmap --ip-address A --override-port P` looks up with target_port=0, which means no filter."""
    cli = vlab.cli("alice")
    esrs = map_port(cli, "10.9.0.9", 443, "esrs1", "ESRS")
    content = ok(cli.get(PORTMAP, params={"name": "esrs1", "target_port": 0}), {"name": "esrs1", "target_port": "0"})
    assert list(content["ports"]) == [str(esrs)]
    ok(delete(cli, {"conn_port": esrs}))


def test_delete_accepts_the_port_as_the_string_key_old_clients_sent(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    port = map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    ok(delete(cli, {"conn_port": str(port)}))
    assert db_count(vlab.url) == 0


def test_filters_are_anded(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    a = map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    b = map_port(cli, "10.9.0.5", 3389, "c1", "CentOS")
    c = map_port(cli, "10.9.0.6", 22, "c2", "CentOS")
    d = map_port(cli, "10.9.0.7", 22, "w1", "Windows")

    def ports(**params: Any) -> list[int]:
        content = ok(cli.get(PORTMAP, params=params), {k: str(v) for k, v in params.items()})
        assert content["gateway_ip"] == GATEWAY_IP
        return [int(p) for p in content["ports"]]

    assert ports() == [a, b, c, d]
    assert ports(name="c1") == [a, b]
    assert ports(component="CentOS") == [a, b, c]
    assert ports(component="CentOS", target_port=22) == [a, c]
    assert ports(target_addr="10.9.0.5") == [a, b]
    assert ports(target_addr="10.9.0.5", target_port=22) == [a]
    assert ports(target_addr="10.9.0.5", name="c2") == []
    assert ports(conn_port=c) == [c]
    assert ports(conn_port=c, name="c1") == []
    assert ports(name="w1", component="Windows", target_addr="10.9.0.7", target_port=22, conn_port=d) == [d]
    # 0 and empty mean "no filter" (the original tested truthiness); unknown params are ignored but echoed
    assert ports(conn_port=0, target_port=0, name="") == [a, b, c, d]
    assert ports(describe_me="x", name="c2") == [c]
    # exact matches only: the original's unescaped LIKE made '%' and '_' wildcards
    assert ports(name="c%") == [] and ports(name="c_") == [] and ports(component="%") == []
    assert ports(target_addr="10.9.0.%") == [] and ports(target_addr="not-an-ip") == []
    assert ports(name="centos 1; drop table forwards") == [] and ports(component="x" * 500) == []
    assert ports(name="C1") == []  # names are case-sensitive, as the original's LIKE


@pytest.mark.parametrize("query", ["conn_port=abc", "target_port=22.0", "target_port=-1", "conn_port=65536",
                                   "target_port=99999999999999999999999", "conn_port=%2022", "target_port=2_2"])
def test_bad_port_filters_are_400_in_the_envelope(vlab: Vlab, query: str) -> None:
    cli = vlab.cli("alice")
    key = query.split("=")[0]
    failed(cli.get(f"{PORTMAP}?{query}"), 400, f"Param {key} must be a number")


def test_addr_lookup(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    map_port(cli, "10.9.0.7", 3389, "win1", "Windows")
    map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    map_port(cli, "10.9.0.5", 443, "c1", "CentOS")
    map_port(cli, "10.9.0.15", 22, "c1", "CentOS")  # a second address of the same machine

    # `vlab status` asks per machine, with auto_check=False, and reads content[vm]["routable"]
    content = ok(cli.get(ADDR, params={"name": "win1"}), {"name": "win1"})
    assert content == {"win1": {"component": "Windows", "routable": None, "addr": ["10.9.0.7"]}}
    assert ok(cli.get(ADDR, params={"name": "c1"}), {"name": "c1"}) == {
        "c1": {"component": "CentOS", "routable": None, "addr": ["10.9.0.5", "10.9.0.15"]}}
    assert ok(cli.get(ADDR, params={"addr": "10.9.0.5"}), {"addr": "10.9.0.5"}) == {
        "c1": {"component": "CentOS", "routable": None, "addr": ["10.9.0.5"]}}
    assert set(ok(cli.get(ADDR, params={"component": "CentOS"}), {"component": "CentOS"})) == {"c1"}
    assert set(ok(cli.get(ADDR))) == {"c1", "win1"}
    assert ok(cli.get(ADDR, params={"name": "ghost"}), {"name": "ghost"}) == {}
    assert ok(cli.get(ADDR, params={"name": "c%"}), {"name": "c%"}) == {}

    err = failed(cli.get(ADDR, params={"name": "c1", "component": "CentOS"}), 400, "mutually exclusive")
    assert "name=c1" in err and "component=CentOS" in err
    failed(cli.get(ADDR, params={"name": "c1", "addr": "10.9.0.5", "component": "CentOS"}), 400,
           "mutually exclusive")
    failed(cli.get(ADDR, params={"addr": "not-an-ip"}), 400, "IPv4")
    failed(cli.get(ADDR, params={"addr": "10.9.0.5; rm -rf /"}), 400, "IPv4")


def test_addr_lookup_routable_follows_the_health_checks(vlab: Vlab) -> None:
    """"routable" ("Connectable" in `vlab status`) from the address states the health checks record: True when
    every address of the machine is up, False when one is down, None while one is undecided. The states are
    written straight into the database, as the health worker does after its probes (which need root)."""
    cli = vlab.cli("alice")
    for addr, name in (("10.9.0.5", "c1"), ("10.9.0.15", "c1"), ("10.9.0.7", "w1"), ("10.9.0.8", "u1"),
                       ("10.9.0.9", "m1"), ("10.9.0.10", "m1")):
        map_port(cli, addr, 22, name, "CentOS")
    states = {"10.9.0.5": "up", "10.9.0.15": "down", "10.9.0.7": "up", "10.9.0.9": "up", "10.9.0.10": "unknown"}
    con = RawConnection(vlab.url)
    try:
        with con:
            con.executemany("INSERT INTO address_health (gateway, address, state, failures) VALUES (?, ?, ?, 0)",
                            [("default", a, st) for a, st in states.items()])
            # the same address on another gateway says nothing about this one
            con.execute("INSERT INTO address_health (gateway, address, state, failures) "
                        "VALUES ('elsewhere', '10.9.0.8', 'down', 3)")
    finally:
        con.close()
    assert {name: m["routable"] for name, m in ok(cli.get(ADDR)).items()} == {
        "c1": False, "w1": True, "u1": None, "m1": None}
    assert ok(cli.get(ADDR, params={"addr": "10.9.0.5"}), {"addr": "10.9.0.5"})["c1"]["routable"] is True


def status_quota_lines(quota: dict[str, Any], vm_count: int) -> list[str]:
    """What `vlab status` (vlab_cli/subcommands/status.py, 2021.3.2) prints from the quota answer, with the same
    operations on the values: "soft-limit" printed as the VM quota and compared with the number of VMs (a warning
    when above it); "exceeded_on", when truthy, printed as a local time, and exceeded_on + "grace_period" printed as
    the date of automatic VM deletion. A value of a type the CLI cannot use fails here as it would there."""
    lines = [f"VM Quota: {quota['soft-limit']}", f"VM Count: {vm_count}"]
    if vm_count > quota["soft-limit"]:
        lines.append("!!!WARNING!!! Currently exceeding VM quota limit!")
    if quota["exceeded_on"]:
        deletion = quota["exceeded_on"] + quota["grace_period"]
        lines.append("Quota Exceeded on: " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(quota["exceeded_on"])))
        lines.append("Automatic VM deletion will occur on: " + time.strftime("%Y-%m-%d %H:%M:%S",
                                                                             time.localtime(deletion)))
    return lines


def test_vlab_status_flow_ends_with_a_quota_that_is_never_exceeded(vlab: Vlab) -> None:
    """`vlab status`: GET ipam/addr?name=<vm> per machine (auto_check=False), then GET /api/1/quota with no
    parameters, reading content["soft-limit"], ["exceeded_on"] and ["grace_period"]. vLab's quota service answered
    in the envelope with exceeded_on/last_notified epoch seconds (0 = none), grace_period seconds and soft-limit a
    VM count; labgate enforces no quota, so: a limit no VM count reaches, never exceeded, nothing to delete."""
    cli = vlab.cli("alice")
    map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    map_port(cli, "10.9.0.7", 3389, "win1", "Windows")
    vms = ["c1", "win1"]
    for vm in vms:
        resp = cli.get(ADDR, params={"name": vm})
        assert resp.json()["error"] is None
        assert resp.json()["content"][vm]["routable"] is None  # printed as "Connectable"

    resp = cli.get(QUOTA)
    assert resp.status_code == 200  # vlab-cli checks the status (auto_check) before reading the body
    quota = ok(resp)
    assert quota == {"exceeded_on": 0, "last_notified": 0, "grace_period": 0, "soft-limit": 2**31 - 1}
    for key, value in quota.items():
        assert type(value) is int, (key, value)  # not a bool, a float or a string: the CLI does arithmetic
    assert status_quota_lines(quota, len(vms)) == ["VM Quota: 2147483647", "VM Count: 2"]
    assert status_quota_lines(quota, 100_000) == ["VM Quota: 2147483647", "VM Count: 100000"]

    # The same for every user (labgate keeps no per-user quota), and unknown parameters are echoed, not used.
    assert ok(vlab.cli("bob").get(QUOTA)) == quota
    assert ok(cli.get(QUOTA, params={"describe": "true"}), {"describe": "true"}) == quota


def test_quota_is_authenticated_like_the_rest(vlab: Vlab) -> None:
    failed(vlab.raw().get(QUOTA), 401, "No auth token sent")
    failed(vlab.cli("alice", vlab.token("alice", exp_in=-120)).get(QUOTA), 401, "No Valid Session Found")
    failed(vlab.cli("alice", vlab_test_key_token("alice")).get(QUOTA), 401, "Invalid auth token")


def test_healthcheck_is_minimal_and_leaks_nothing(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    map_port(cli, "10.9.0.5", 22, "secret-machine", "CentOS")
    resp = vlab.raw().get(HEALTH)  # no token, as the original
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    for leak in ("10.9.0.5", "secret-machine", "4000", "alice", "CentOS", GATEWAY_IP):
        assert leak not in resp.text


def test_openapi_lists_the_compat_paths_when_enabled(vlab: Vlab) -> None:
    paths = vlab.raw().get("/openapi.json").json()["paths"]
    assert {"get", "post", "delete"} <= set(paths[PORTMAP])
    assert "get" in paths[ADDR] and "get" in paths[HEALTH] and "get" in paths[QUOTA]


def test_openapi_documents_the_compat_calls_as_they_answer(vlab: Vlab) -> None:
    """Each vLab call is documented with its token (X-Auth), its parameters or body, and every status it answers
    with the envelope's schema (they used to document no parameter, no body, no X-Auth and no status but 200);
    real answers, good and bad, have the documented shape."""
    spec = vlab.raw().get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["vLabToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Auth")
    ops = {(method.upper(), path): op for path, item in spec["paths"].items() if path.startswith("/api/1/")
           for method, op in item.items()}
    statuses = {("GET", PORTMAP): {"200", "400", "401", "413", "429", "500"},
                ("POST", PORTMAP): {"200", "400", "401", "409", "413", "429", "500"},
                ("DELETE", PORTMAP): {"200", "400", "401", "404", "413", "429", "500"},
                ("GET", ADDR): {"200", "400", "401", "413", "429", "500"},
                ("GET", QUOTA): {"200", "401", "413", "429", "500"}, ("GET", HEALTH): {"200"}}
    assert {key: set(op["responses"]) for key, op in ops.items()} == statuses
    for key, op in ops.items():
        assert op.get("security") == (None if key[1] == HEALTH else [{"vLabToken": []}]), key
        for status, answer in op["responses"].items():
            ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            assert ref == {"200": ref, "413": "ErrorOut"}.get(status, "VlabFailed"), (key, status, ref)
    assert [p["name"] for p in ops[("GET", PORTMAP)]["parameters"]] == [
        "name", "target_addr", "component", "conn_port", "target_port"]
    assert sorted(p["name"] for p in ops[("GET", ADDR)]["parameters"]) == ["addr", "component", "name"]
    create = ops[("POST", PORTMAP)]["requestBody"]["content"]["application/json"]["schema"]
    assert sorted(create["required"]) == ["target_addr", "target_component", "target_name", "target_port"]
    assert create["properties"]["target_port"] == {"type": "integer", "minimum": 1, "maximum": 65535}
    assert "additionalProperties" not in create  # extra keys are ignored, as the original's schema did
    assert ops[("DELETE", PORTMAP)]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "conn_port"]

    # Real answers have the documented shapes (the models the schema is made of, strictly).
    from labgate.api.routes import compat as routes

    cli = vlab.cli("alice")
    port = map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    answers = [(cli.get(PORTMAP), routes.VlabPortsOk), (cli.get(ADDR, params={"name": "c1"}), routes.VlabMachinesOk),
               (cli.get(QUOTA), routes.VlabQuotaOk), (vlab.raw().get(HEALTH), routes.VlabHealth),
               (cli.post(PORTMAP, json={"target_addr": "10.9.0.6", "target_port": 22, "target_name": "c2",
                                        "target_component": "CentOS"}), routes.VlabConnPortOk),
               (delete(cli, {"conn_port": port}), routes.VlabDeletedOk)]
    for resp in (vlab.raw().get(PORTMAP), cli.get(PORTMAP, params={"conn_port": "x"}),
                 delete(cli, {"conn_port": port}), cli.post(PORTMAP, json={"target_addr": "10.9.0.5"})):
        assert resp.status_code in (400, 401, 404), resp.text
        answers.append((resp, routes.VlabFailed))
    for resp, model in answers:
        model.model_validate(resp.json(), strict=True)
        assert str(resp.status_code) in ops[(resp.request.method, resp.request.url.path)]["responses"]


# --- authentication ---------------------------------------------------------------------------------------------
def bad_tokens(v: Vlab) -> list[tuple[str, str | None, str]]:
    wrong_key = secrets.token_urlsafe(48).encode()
    return [
        ("missing header", None, "No auth token sent"),
        ("empty header", "", "No auth token sent"),
        ("garbage", "not.a.jwt", "Invalid auth token"),
        ("bearer prefix", "Bearer " + v.token("alice"), "Invalid auth token"),
        ("wrong key", jwt.encode(claims("alice"), wrong_key, algorithm="HS256"), "Invalid auth token"),
        ("vLab test key", vlab_test_key_token("alice"), "Invalid auth token"),
        ("wrong issuer", v.token("alice", iss="https://evil.example"), "issuer"),
        ("no issuer", v.token("alice", iss=None), "iss"),
        ("expired", v.token("alice", exp_in=-120), "No Valid Session Found"),
        ("no expiry", v.token("alice", exp_in=None), "exp"),
        ("not yet valid", v.token("alice", nbf=int(time.time()) + 3600), "Invalid auth token"),
        ("alg none (PyJWT)", jwt.encode(claims("alice"), None, algorithm="none"), "Invalid auth token"),
        ("alg none (by hand)", handmade({"alg": "none", "typ": "JWT"}, claims("alice"), None), "Invalid auth token"),
        ("alg None, HS signature", handmade({"alg": "None", "typ": "JWT"}, claims("alice"), v.keys.hs_secret),
         "Invalid auth token"),
        ("HS512 with the right secret", jwt.encode(claims("alice"), v.keys.hs_secret + b"x" * 16,
                                                    algorithm="HS512"), "Invalid auth token"),
        ("RS256 by another key", jwt.encode(claims("alice"), v.keys.other_rsa_private, algorithm="RS256"),
         "Invalid auth token"),
        ("no username", v.token(None), "username"),
        ("username not a string", v.sign({**claims(None), "username": ["alice"]}), "username"),
        ("username not an owner name", v.token("Alice Smith"), "owner name"),
        ("tampered payload", tamper(v.token("alice")), "Invalid auth token"),
    ]


def tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["username"] = "bob"
    return f"{head}.{b64(json.dumps(data).encode())}.{sig}"


def test_bad_tokens_are_401_in_the_envelope_and_change_nothing(vlab: Vlab) -> None:
    map_port(vlab.cli("alice"), "10.9.0.5", 22, "c1", "CentOS")
    before = db_rows(vlab.url)
    for i, (label, token, words) in enumerate(bad_tokens(vlab)):
        # Each bad token from its own address: one address would meet the failed-login limit (20 a minute).
        c = vlab.raw(local_address=f"127.0.0.{10 + i}")
        headers = {} if token is None else {"X-Auth": token}
        for method, path, params, body in (
                ("GET", PORTMAP, {"name": "c1"}, None),
                ("POST", PORTMAP, None, {"target_addr": "10.9.0.6", "target_port": 22, "target_name": "c2",
                                         "target_component": "CentOS"}),
                ("DELETE", PORTMAP, None, {"conn_port": 4000}),
                ("GET", ADDR, {"name": "c1"}, None),
                ("GET", QUOTA, None, None),
                ("POST", PORTMAP, None, {"bad": "body"})):  # auth comes before input checks, as the original
            resp = c.request(method, path, params=params, json=body, headers=headers)
            err = failed(resp, 401)
            assert words.lower() in err.lower(), (label, method, err)
            assert resp.json()["params"] == (params or {})
            assert "10.9.0.5" not in resp.text and "4000" not in err, (label, resp.text)
    assert db_rows(vlab.url) == before


def test_token_checks_allow_the_configured_clock_skew(vlab: Vlab) -> None:
    # vLab allowed 10 s of skew; so does the default jwt_leeway
    ok(vlab.cli("alice", vlab.token("alice", exp_in=-3)).get(PORTMAP))
    failed(vlab.cli("alice", vlab.token("alice", exp_in=-30)).get(PORTMAP), 401, "No Valid Session Found")


def test_rs256_public_key_and_no_algorithm_confusion(vlab_rs: Vlab) -> None:
    cli = vlab_rs.cli("alice")
    port = map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    assert connect_lookup(cli, "c1", 22) == (str(port), GATEWAY_IP)
    # HS256 "signed" with the public key PEM as the secret: the classic confusion attack
    forged = handmade({"alg": "HS256", "typ": "JWT"}, claims("bob"), vlab_rs.keys.rsa_public_pem)
    failed(vlab_rs.cli("bob", forged).get(PORTMAP), 401, "Invalid auth token")
    failed(vlab_rs.cli("bob", jwt.encode(claims("bob"), vlab_rs.keys.other_rsa_private, algorithm="RS256"))
           .get(PORTMAP), 401, "Invalid auth token")
    failed(vlab_rs.cli("bob", jwt.encode(claims("bob"), None, algorithm="none")).get(PORTMAP), 401)
    failed(vlab_rs.cli("bob", jwt.encode(claims("bob"), vlab_rs.keys.rsa_private, algorithm="RS512"))
           .get(PORTMAP), 401)
    failed(vlab_rs.cli("alice", vlab_rs.token("alice", iss="https://other.example")).get(PORTMAP), 401, "issuer")
    assert db_count(vlab_rs.url) == 1


def test_owner_claim_is_configurable(database_url: str, keys: Keys) -> None:
    with vlab_server(database_url, keys, hs_compat(keys, owner_claim="sub")) as v:
        cli = v.cli("x", jwt.encode(claims(None, sub="carol"), keys.hs_secret, algorithm="HS256"))
        port = map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
        # a token without the configured claim is refused even if it carries "username"
        failed(v.cli("alice").get(PORTMAP), 401, "sub")
        assert [f["external_port"] for f in v.v1("carol").get(FORWARDS).json()["results"]] == [port]


# --- isolation --------------------------------------------------------------------------------------------------
def test_two_vlab_users_see_and_touch_only_their_own(vlab: Vlab) -> None:
    alice, bob = vlab.cli("alice"), vlab.cli("bob")
    a = map_port(alice, "10.9.0.5", 22, "c1", "CentOS")
    b = map_port(bob, "10.9.0.5", 22, "c1", "CentOS")  # same name and target: a separate forward
    assert a != b  # one gateway, one pool of external ports

    assert list(ok(alice.get(PORTMAP))["ports"]) == [str(a)]
    assert list(ok(bob.get(PORTMAP))["ports"]) == [str(b)]
    assert ok(bob.get(PORTMAP, params={"conn_port": a}), {"conn_port": str(a)})["ports"] == {}
    assert connect_lookup(bob, "c1", 22) == (str(b), GATEWAY_IP)
    assert set(ok(bob.get(ADDR))) == {"c1"} and ok(bob.get(ADDR, params={"addr": "10.9.0.5"}),
                                                   {"addr": "10.9.0.5"})["c1"]["addr"] == ["10.9.0.5"]

    # bob cannot delete alice's map: reported exactly like a port nobody has
    before = db_rows(vlab.url)
    assert failed(delete(bob, {"conn_port": a}), 404) == failed(delete(bob, {"conn_port": 4099}), 404)
    assert db_rows(vlab.url) == before
    ok(delete(alice, {"conn_port": a}))
    assert list(ok(bob.get(PORTMAP))["ports"]) == [str(b)]


# --- input checks -----------------------------------------------------------------------------------------------
GOOD = {"target_addr": "10.9.0.5", "target_port": 22, "target_name": "c1", "target_component": "CentOS"}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize("body, words", [
    (without("target_addr"), "'target_addr' is a required property"),
    (without("target_port"), "'target_port' is a required property"),
    (without("target_name"), "'target_name' is a required property"),
    (without("target_component"), "'target_component' is a required property"),
    ({**GOOD, "target_port": "22"}, "must be an integer"),
    ({**GOOD, "target_port": True}, "must be an integer"),
    ({**GOOD, "target_port": 22.5}, "must be an integer"),
    ({**GOOD, "target_port": None}, "must be an integer"),
    ({**GOOD, "target_port": 0}, "1-65535"),
    ({**GOOD, "target_port": 65536}, "1-65535"),
    ({**GOOD, "target_port": 10 ** 30}, "1-65535"),
    ({**GOOD, "target_addr": 167837957}, "must be a string"),
    ({**GOOD, "target_addr": "not-an-ip"}, "not an IP address"),
    ({**GOOD, "target_addr": "10.9.0.5 -j ACCEPT"}, "not an IP address"),
    ({**GOOD, "target_addr": "192.168.1.10"}, "outside the target networks"),
    ({**GOOD, "target_addr": "10.9.0.255"}, "broadcast"),
    ({**GOOD, "target_addr": "127.0.0.1"}, "loopback"),
    ({**GOOD, "target_addr": "::1"}, "IPv6"),
    ({**GOOD, "target_addr": GATEWAY_IP}, ""),
    ({**GOOD, "target_addr": "1" * 5000}, "longer than 64"),
    ({**GOOD, "target_name": "my box"}, "name must be"),
    ({**GOOD, "target_name": ""}, "name must be"),
    ({**GOOD, "target_name": "x" * 64}, "longer than 63"),
    ({**GOOD, "target_name": ["c1"]}, "must be a string"),
    ({**GOOD, "target_component": "One FS!"}, "kind must be"),
    ({**GOOD, "target_component": "x" * 33}, "longer than 32"),
    ({**GOOD, "target_component": None}, "must be a string"),
])
def test_invalid_post_bodies_are_400_in_the_envelope_and_create_nothing(vlab: Vlab, body: dict, words: str) -> None:
    failed(vlab.cli("alice").post(PORTMAP, json=body), 400, words)
    assert db_count(vlab.url) == 0


@pytest.mark.parametrize("content, words", [
    (b"", "No JSON content body"),
    (b"   ", "No JSON content body"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"),
    (b"null", "JSON object"),
    (b"[" * 100000, "not valid JSON"),
])
def test_undecodable_bodies_are_400_in_the_envelope(vlab: Vlab, content: bytes, words: str) -> None:
    cli = vlab.cli("alice")
    for method in ("POST", "DELETE"):
        failed(cli.request(method, PORTMAP, content=content, headers={"Content-Type": "application/json"}), 400,
               words)
    assert db_count(vlab.url) == 0


@pytest.mark.parametrize("body, status, words", [
    ({}, 400, "'conn_port' is a required property"),
    ({"conn_port": True}, 400, "must be an integer"),
    ({"conn_port": 4000.0}, 400, "must be an integer"),
    ({"conn_port": "4000; drop"}, 400, "must be an integer"),
    ({"conn_port": None}, 400, "must be an integer"),
    ({"conn_port": 0}, 400, "1-65535"),
    ({"conn_port": -1}, 400, "1-65535"),
    ({"conn_port": 2 ** 63}, 400, "1-65535"),
    ({"conn_port": 4099}, 404, "No such port mapping record"),
])
def test_invalid_deletes_are_in_the_envelope_and_delete_nothing(vlab: Vlab, body: dict, status: int,
                                                                words: str) -> None:
    cli = vlab.cli("alice")
    map_port(cli, "10.9.0.5", 22, "c1", "CentOS")
    before = db_rows(vlab.url)
    failed(delete(cli, body), status, words)
    assert db_rows(vlab.url) == before


def test_extra_fields_are_ignored_like_the_originals_schema(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    content = ok(cli.post(PORTMAP, json={**GOOD, "routable": True, "owner": "bob"}))
    fwd = vlab.v1("alice").get(FORWARDS).json()["results"][0]
    assert fwd["external_port"] == content["conn_port"] and fwd["owner"] == "alice"
    assert vlab.v1("bob").get(FORWARDS).json()["count"] == 0


def test_full_range_is_409_in_the_envelope(database_url: str, keys: Keys) -> None:
    small = [gw("default", external_address=GATEWAY_IP, port_range=["4000-4001"])]
    with vlab_server(database_url, keys, hs_compat(keys), small) as v:
        cli = v.cli("alice")
        assert [map_port(cli, "10.9.0.5", p, "c1", "CentOS") for p in (22, 443)] == [4000, 4001]
        failed(cli.post(PORTMAP, json={**GOOD, "target_port": 3389}), 409, "no free")
        ok(delete(cli, {"conn_port": 4000}))
        assert map_port(cli, "10.9.0.5", 3389, "c1", "CentOS") == 4000  # the freed port is found again


# --- one set of forwards for both APIs ---------------------------------------------------------------------------
def test_compat_forwards_are_labgate_forwards_of_the_same_owner(vlab: Vlab) -> None:
    cli = vlab.cli("alice")
    port = map_port(cli, "10.9.0.5", 22, "centos1", "CentOS")
    mine = vlab.v1("alice").get(FORWARDS).json()
    assert mine["count"] == 1
    fwd = mine["results"][0]
    assert (fwd["owner"], fwd["gateway"], fwd["protocol"], fwd["external_address"], fwd["external_port"],
            fwd["port_count"], fwd["target_address"], fwd["target_port"], fwd["name"], fwd["kind"],
            fwd["enabled"], fwd["allowed_sources"]) == (
        "alice", "default", "tcp", GATEWAY_IP, port, 1, "10.9.0.5", 22, "centos1", "CentOS", True, [])
    assert vlab.v1("bob").get(FORWARDS).json()["count"] == 0
    machines = vlab.v1("alice").get("/api/v1/machines").json()["results"]
    assert [(m["name"], m["kind"], m["addresses"]) for m in machines] == [("centos1", "CentOS", ["10.9.0.5"])]

    # and the other way round: a forward made through /api/v1 is a port map for vLab clients
    v1 = vlab.v1("alice").post(FORWARDS, json={"target_address": "10.9.0.7", "target_port": 3389,
                                               "name": "win1", "kind": "Windows"}).json()
    assert connect_lookup(cli, "win1", 3389) == (str(v1["external_port"]), GATEWAY_IP)
    # deleting through vLab removes it from /api/v1 too
    ok(delete(cli, {"conn_port": port}))
    assert [f["id"] for f in vlab.v1("alice").get(FORWARDS).json()["results"]] == [v1["id"]]


def test_shapes_vlab_clients_cannot_handle_stay_out_of_their_view(vlab: Vlab) -> None:
    """UDP forwards, port blocks, disabled forwards and forwards without name or kind are labgate-only."""
    lg = vlab.v1("alice")
    created = [lg.post(FORWARDS, json=body).json() for body in (
        {"target_address": "10.9.0.5", "target_port": 53, "protocol": "udp", "name": "dns1", "kind": "DNS"},
        {"target_address": "10.9.0.5", "target_port": 5900, "port_count": 3, "name": "c1", "kind": "CentOS"},
        {"target_address": "10.9.0.5", "target_port": 22, "enabled": False, "name": "c1", "kind": "CentOS"},
        {"target_address": "10.9.0.6", "target_port": 22},
        {"target_address": "10.9.0.6", "target_port": 22, "name": "c2"},
    )]
    assert all("id" in f for f in created), created
    cli = vlab.cli("alice")
    assert ok(cli.get(PORTMAP))["ports"] == {}
    assert ok(cli.get(ADDR)) == {}
    # deleting a port block through the vLab API would remove more than the client asked for
    failed(delete(cli, {"conn_port": created[1]["external_port"]}), 404)
    # a disabled or nameless single TCP forward of the caller's is still theirs to delete by port
    ok(delete(cli, {"conn_port": created[2]["external_port"]}))
    ok(delete(cli, {"conn_port": created[3]["external_port"]}))
    assert lg.get(FORWARDS).json()["count"] == 3


def test_compat_acts_on_the_configured_gateway(database_url: str, keys: Keys) -> None:
    gateways = [gw("lab1", external_address="198.51.100.1", target_networks=["10.9.0.0/24"]),
                gw("lab2", external_address="198.51.100.2", port_range=["5000-5010"],
                   target_networks=["10.10.0.0/24"])]
    with vlab_server(database_url, keys, hs_compat(keys, gateway="lab2"), gateways) as v:
        cli = v.cli("alice")
        port = map_port(cli, "10.10.0.5", 22, "c1", "CentOS")
        assert port == 5000
        assert connect_lookup(cli, "c1", 22) == ("5000", "198.51.100.2")
        failed(cli.post(PORTMAP, json=GOOD), 400, "outside the target networks")  # 10.9.0.5 belongs to lab1
        v.v1("alice").post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22, "name": "c1",
                                           "kind": "CentOS", "gateway": "lab1"})
        assert list(ok(cli.get(PORTMAP))["ports"]) == ["5000"]  # lab1's forward is not in the vLab view
        assert [f["gateway"] for f in v.v1("alice").get(FORWARDS).json()["results"]] == ["lab2", "lab1"]
