"""Setting the vLab API up as a real deployment does: vLab's own key file (written with a trailing newline) and
HTTPS, which vlab-cli insists on (it forces https:// on the server URL), served by labgate itself."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import subprocess
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labgate.config import CompatConfig, ConfigError, GatewayConfig, ServerConfig, Settings, load_settings
from tests.api.test_compat import CLI_AGENT, GATEWAY_IP, ISSUER, claims, ok
from tests.harness import running_server


def echo_key_file(tmp_path: Path) -> Path:
    """The key file as an admin makes it for vlab-auth-service: `echo "$SECRET" > key`, newline included."""
    path = tmp_path / "vlab.key"
    subprocess.run(["bash", "-c", 'echo "$SECRET" > "$KEYFILE"'], check=True,
                   env={"SECRET": secrets.token_urlsafe(48), "KEYFILE": str(path), "PATH": "/usr/bin:/bin"})
    assert path.read_bytes().endswith(b"\n")
    return path


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labgate test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "labgate.crt", tmp_path / "labgate.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def settings(url: str, key_file: Path, **server: str) -> Settings:
    return Settings(server=ServerConfig(database=url, dataplane="none", **server),
                    gateway=[GatewayConfig(name="default", external_address=GATEWAY_IP, port_range=["4000-4100"],
                                           target_networks=["10.9.0.0/24"])],
                    compat=CompatConfig(vlab_enabled=True, jwt_algorithm="HS256", jwt_key_file=str(key_file),
                                        jwt_issuer=ISSUER))


def test_vlab_key_file_with_a_trailing_newline_verifies_vlab_tokens(database_url: str, tmp_path: Path) -> None:
    key_file = echo_key_file(tmp_path)
    as_vlab_reads_it = key_file.read_bytes()  # vlab-auth-service signs with the file's text exactly as read
    with running_server(settings(database_url, key_file)) as srv:
        good = jwt.encode(claims("alice"), as_vlab_reads_it, algorithm="HS256")
        other = jwt.encode(claims("alice"), as_vlab_reads_it.rstrip(b"\n"), algorithm="HS256")
        with httpx.Client(base_url=srv.url, headers={"User-Agent": CLI_AGENT}) as c:
            ok(c.get("/api/1/ipam/portmap", headers={"X-Auth": good}))
            # The key is the file's bytes: a token signed without the newline was signed with another key.
            assert c.get("/api/1/ipam/portmap", headers={"X-Auth": other}).status_code == 401


def test_vlab_api_over_labgates_own_https(database_url: str, tmp_path: Path) -> None:
    key_file = echo_key_file(tmp_path)
    cert, key = self_signed(tmp_path)
    token = jwt.encode(claims("alice"), key_file.read_bytes(), algorithm="HS256")
    with running_server(settings(database_url, key_file, tls_cert_file=str(cert), tls_key_file=str(key))) as srv:
        assert srv.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=srv.url, verify=trust, headers={"X-Auth": token, "User-Agent": CLI_AGENT}) as c:
            created = c.post("/api/1/ipam/portmap", json={"target_addr": "10.9.0.5", "target_port": 22,
                                                          "target_name": "centos1", "target_component": "CentOS"})
            port = ok(created)["conn_port"]
            listed = ok(c.get("/api/1/ipam/portmap", params={"name": "centos1"}), {"name": "centos1"})
            assert listed["ports"][str(port)]["target_addr"] == "10.9.0.5"
        # Plain HTTP to the HTTPS port is not served, and a client that checks certificates refuses an unknown one.
        with pytest.raises(httpx.HTTPError):
            httpx.get(srv.url.replace("https://", "http://") + "/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/healthz", timeout=5)


def test_tls_settings_go_together_and_must_be_readable(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with pytest.raises(ValueError, match="go together"):
        ServerConfig(tls_cert_file=str(cert))
    with pytest.raises(ValueError, match="cannot be read"):
        ServerConfig(tls_cert_file=str(cert), tls_key_file=str(tmp_path / "missing.key"))
    config = tmp_path / "labgate.toml"
    config.write_text(f'[server]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
    assert load_settings(config).server.scheme == "https"
    config.write_text(f'[server]\ntls_key_file = "{key}"\n')
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load_settings(config)
