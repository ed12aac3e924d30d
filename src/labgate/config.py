"""Settings: one TOML file (optional) plus LABGATE_* environment overrides, validated once at start."""

from __future__ import annotations

import binascii
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from labgate.inline_secrets import refuse_inline_secrets
from labgate.workers.sinks import SinkConfig, sink_names

GATEWAY_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# "qrouter-<uuid>" is 44 characters; leave room but refuse anything a path or shell could misread.
NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
# An interface name as the kernel allows it (IFNAMSIZ 16 with the NUL), minus anything `ip` could misread.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def parse_port_range(text: str) -> tuple[int, int]:
    """'4000-4100' or '4000' -> (4000, 4100); raises ValueError with a readable reason."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?", text)
    if not m:
        raise ValueError(f"port range {text!r} is not of the form 'LOW-HIGH'")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
    return low, high


class GatewayConfig(BaseModel):
    """One place where forwards live: a network namespace and its external address."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    netns: str = ""
    # "auto": the first global IPv4 address of the namespace's default-route interface, read at start.
    external_address: str = "auto"
    port_range: list[str] = Field(default_factory=lambda: ["4000-4999"])
    target_networks: list[str] = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    masquerade: bool = True
    # The namespace must route (net.ipv4.ip_forward = 1) for any forward to pass. true: labgate turns it on;
    # false: labgate only reports a gateway that does not forward; unset: on for a named namespace labgate is told
    # to manage, report-only for the host's own namespace (whose routing is the host admin's decision).
    enable_forwarding: bool | None = None
    # Dynamic DNS (docs/ddns.md): the name kept pointing at this gateway's address, inside [ddns] zone ...
    dns_name: str | None = None
    # ... and where that address is read: this interface inside the gateway's namespace (its first global IPv4
    # address); unset = external_address (the configured one, or for "auto" the default route's).
    ddns_interface: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not GATEWAY_NAME_RE.fullmatch(v):
            raise ValueError("gateway name must match [a-z][a-z0-9_-]{0,30}")
        return v

    @field_validator("dns_name")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        return None if v is None else dns_name_text(v, "dns_name")

    @field_validator("ddns_interface")
    @classmethod
    def _ddns_interface(cls, v: str | None) -> str | None:
        if v is not None and not IFNAME_RE.fullmatch(v):
            raise ValueError("ddns_interface must be an interface name (1-15 of letters, digits, '_', '.', ':', '-')")
        return v

    @field_validator("netns")
    @classmethod
    def _netns(cls, v: str) -> str:
        if v and not NETNS_RE.fullmatch(v):
            raise ValueError("netns must be empty (host namespace) or a plain namespace name")
        return v

    @field_validator("external_address")
    @classmethod
    def _external(cls, v: str) -> str:
        if v == "auto":
            return v
        addr = ipaddress.ip_address(v)
        if addr.version != 4:
            raise ValueError("only IPv4 external addresses are supported so far")
        return str(addr)

    @field_validator("port_range", mode="before")
    @classmethod
    def _ranges_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("port_range")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one port range is needed")
        parsed = sorted(parse_port_range(r) for r in v)
        for (_, high), (low, _) in zip(parsed, parsed[1:]):
            if low <= high:
                raise ValueError("port ranges overlap")
        return [f"{lo}-{hi}" for lo, hi in parsed]

    @field_validator("target_networks")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one target network is needed")
        nets = [ipaddress.ip_network(n, strict=False) for n in v]
        if any(n.version != 4 for n in nets):
            raise ValueError("only IPv4 target networks are supported so far")
        return [str(n) for n in nets]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [parse_port_range(r) for r in self.port_range]

    @property
    def networks(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(n) for n in self.target_networks]

    @property
    def manages_forwarding(self) -> bool:
        """Whether labgate may turn net.ipv4.ip_forward on in this gateway's namespace."""
        return self.enable_forwarding if self.enable_forwarding is not None else bool(self.netns)

    @property
    def table_name(self) -> str:
        """The nftables table labgate owns for this gateway (identifier-safe by construction)."""
        return "labgate_" + self.name.replace("-", "_")


class ServerConfig(BaseSettings):
    """The [server] section; every key can be overridden by LABGATE_<KEY> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LABGATE_", extra="forbid")

    listen: str = "127.0.0.1:3000"
    # A relative SQLite path is taken inside data_dir, wherever labgate is started from: `labgate serve` and
    # `labgate token create` run from two directories use the same file.
    database: str = "sqlite:///labgate.db"
    data_dir: str = Field(default_factory=lambda: default_data_dir())
    # Serve HTTPS with this certificate (PEM, chain included) and key; both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    reconcile_interval: float = Field(default=30.0, gt=0)
    # Every this many seconds the whole table is rendered again even if the cheap check saw no drift.
    full_resync_interval: float = Field(default=600.0, gt=0)
    # How often kernel usage counters are read into the database, and targets are probed.
    usage_interval: float = Field(default=60.0, gt=0)
    health_interval: float = Field(default=60.0, gt=0)
    # Which dataplane applies rules: "nft" (the kernel) or "none" (API only, e.g. `serve --no-agent`).
    dataplane: str = "nft"
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: an operator overrides one key without editing it.
        return env_settings, init_settings

    @field_validator("dataplane")
    @classmethod
    def _dataplane(cls, v: str) -> str:
        if v not in ("nft", "none"):
            raise ValueError("dataplane must be 'nft' or 'none'")
        return v

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.is_absolute():
            raise ValueError(f"data_dir {v!r} must be an absolute path")
        return str(path)

    @model_validator(mode="after")
    def _resolve(self) -> "ServerConfig":
        self.database = resolve_database_url(self.database, Path(self.data_dir))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both (HTTPS) or neither (HTTP)")
        for key in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{key} {path!r} cannot be read")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def default_data_dir() -> str:
    """Where labgate keeps its state unless told otherwise: /var/lib/labgate for root, else the user's data dir."""
    if os.geteuid() == 0:
        return "/var/lib/labgate"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "labgate")


def resolve_database_url(url: str, data_dir: Path) -> str:
    """`url` with a relative SQLite file path made absolute inside `data_dir` (other URLs unchanged)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"database {url!r} is not a database URL (e.g. sqlite:///labgate.db or "
                         "postgresql+psycopg://user@host/labgate)") from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database).expanduser()
    if path.is_absolute():
        return url
    return parsed.set(database=str(data_dir / path)).render_as_string(hide_password=False)


def database_display(url: str) -> str:
    """The database URL as it may be shown to a person: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512")
# RFC 7518 3.2: an HMAC key must be at least as long as the hash output.
HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_MIN_KEY_BITS = 2048


def load_jwt_key(algorithm: str, path: str) -> Any:
    """The key that verifies vLab tokens: the HMAC secret (bytes) for HS*, an RSA public key for RS*.

    Raises ValueError with a readable reason. There is deliberately no fallback or built-in key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"compat.jwt_key_file {path!r} cannot be read: {exc.strerror or exc}") from None
    if algorithm.startswith("HS"):
        # The file's bytes as they are, a trailing newline included: vlab-auth-service signs with its key file's
        # text exactly as read, so stripping anything would refuse every real vLab token (docs/compat.md).
        secret = raw
        need = HMAC_MIN_KEY_BYTES[algorithm]
        if len(secret) < need:
            raise ValueError(f"compat.jwt_key_file holds {len(secret)} bytes; {algorithm} needs a secret of at "
                             f"least {need} bytes")
        if b"-----BEGIN" in secret:
            raise ValueError(f"compat.jwt_key_file looks like a PEM key; {algorithm} needs a shared secret "
                             "(use RS256 with a public key)")
        return secret
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(raw)
    except ValueError:
        raise ValueError(f"compat.jwt_key_file {path!r} is not a PEM public key (BEGIN PUBLIC KEY); "
                         f"{algorithm} verifies with the issuer's public key, never a private key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"compat.jwt_key_file {path!r} is not an RSA public key, which {algorithm} needs")
    if key.key_size < RSA_MIN_KEY_BITS:
        raise ValueError(f"compat.jwt_key_file holds a {key.key_size}-bit RSA key; at least {RSA_MIN_KEY_BITS} "
                         "bits are needed")
    return key


class CompatConfig(BaseModel):
    """The [compat] section: the vLab (vlab_ipam_api) compatibility API. Off unless vlab_enabled = true, and then
    it needs an explicit algorithm, key file and issuer: labgate has no built-in key."""

    model_config = ConfigDict(extra="forbid")

    vlab_enabled: bool = False
    jwt_algorithm: str | None = None
    jwt_key_file: str | None = None
    jwt_issuer: str | None = None
    # The claim naming the owner of forwards (vLab tokens carry "username").
    owner_claim: str = "username"
    # Clock skew allowed on exp/nbf/iat, in seconds (vLab allowed 10).
    jwt_leeway: int = Field(default=10, ge=0, le=300)
    # Which gateway the compat API acts on; may be left out when there is only one.
    gateway: str | None = None

    @field_validator("jwt_algorithm")
    @classmethod
    def _algorithm(cls, v: str | None) -> str | None:
        if v is not None and v not in JWT_ALGORITHMS:
            raise ValueError(f"compat.jwt_algorithm must be one of {', '.join(JWT_ALGORITHMS)}")
        return v

    @field_validator("owner_claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", v):
            raise ValueError("compat.owner_claim must be a plain claim name such as 'username'")
        return v

    @model_validator(mode="after")
    def _complete(self) -> "CompatConfig":
        if not self.vlab_enabled:
            return self
        missing = [k for k in ("jwt_algorithm", "jwt_key_file", "jwt_issuer") if not getattr(self, k)]
        if missing:
            raise ValueError(f"compat.vlab_enabled needs {', '.join('compat.' + m for m in missing)} "
                             "(there is no built-in key)")
        assert self.jwt_algorithm and self.jwt_key_file
        load_jwt_key(self.jwt_algorithm, self.jwt_key_file)  # fail at start, not on the first request
        return self


# --- dynamic DNS -------------------------------------------------------------------------------------------------

# TSIG algorithms accepted for [ddns] (RFC 8945); names as BIND's `tsig-keygen -a` and dnspython spell them.
TSIG_ALGORITHMS = ("hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
_KEY_BLOCK_RE = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_KEY_ALGORITHM_RE = re.compile(r"algorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;")
_KEY_SECRET_RE = re.compile(r'secret\s+"([^"]*)"\s*;')
DDNS_INLINE_SECRET_KEYS = ("secret", "key", "password", "token", "tsig_secret", "key_secret")


def dns_name_text(value: str, what: str) -> str:
    """A DNS name as labgate stores it: lower case, absolute, without the final dot ('lab.example.net')."""
    if not isinstance(value, str) or not value.strip(".") or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a DNS name such as 'lab.example.net'")
    try:
        name = dns.name.from_text(value.lower())
    except dns.exception.DNSException as exc:
        raise ValueError(f"{what} {value!r} is not a valid DNS name: {exc}") from None
    return name.to_text(omit_final_dot=True)


class TsigKey(BaseModel):
    """A TSIG key read from [ddns] key_file. The secret (base64) stays in memory; repr() never shows it."""

    model_config = ConfigDict(frozen=True)

    name: str
    algorithm: str
    secret: str = Field(repr=False)


def load_tsig_key(path: str, name: str | None, algorithm: str | None) -> TsigKey:
    """Read the TSIG secret from `path`: either the base64 secret alone, or a BIND key file as `tsig-keygen`
    writes it (`key "NAME" { algorithm hmac-sha256; secret "..."; };`), whose name and algorithm then fill in
    what the config leaves out (and must agree with what it says).

    Raises ValueError with a readable reason that never contains the file's content."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"ddns.key_file {path!r} cannot be read: {reason}") from None
    blocks = _KEY_BLOCK_RE.findall(text)
    if blocks:
        if name is not None:
            blocks = [b for b in blocks if b[0].rstrip(".").lower() == name.rstrip(".").lower()]
            if not blocks:
                raise ValueError(f"ddns.key_file {path!r} holds no key named {name!r}")
        elif len(blocks) > 1:
            raise ValueError(f"ddns.key_file {path!r} holds several keys: say which one with ddns.key_name")
        key_name, body = blocks[0]
        alg = _KEY_ALGORITHM_RE.search(body)
        sec = _KEY_SECRET_RE.search(body)
        if alg is None or sec is None:
            raise ValueError(f"ddns.key_file {path!r}: the key block needs an algorithm and a secret")
        file_algorithm = alg.group(1).lower()
        if algorithm is not None and file_algorithm != algorithm:
            raise ValueError(f"ddns.key_file {path!r} says algorithm {file_algorithm}, the config says {algorithm}")
        name, algorithm, secret = key_name, file_algorithm, sec.group(1).strip()
    else:
        if "{" in text or "}" in text:
            raise ValueError(f"ddns.key_file {path!r} is neither a base64 secret nor a BIND key block")
        secret = "".join(text.split())
        if name is None or algorithm is None:
            raise ValueError(f"ddns.key_file {path!r} holds only a secret: ddns.key_name and ddns.key_algorithm "
                             "are needed too")
    if algorithm not in TSIG_ALGORITHMS:
        raise ValueError(f"TSIG algorithm {algorithm!r} is not supported; use one of {', '.join(TSIG_ALGORITHMS)}")
    try:
        raw = binascii.a2b_base64(secret.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if not raw:
        raise ValueError(f"ddns.key_file {path!r}: the secret is not valid base64 (make one with "
                         f"`tsig-keygen -a {algorithm} NAME`)")
    return TsigKey(name=name.rstrip(".").lower(), algorithm=algorithm, secret=secret)


class DdnsConfig(BaseModel):
    """The [ddns] section: RFC 2136 updates, signed with TSIG, to one authoritative server (docs/ddns.md)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    server: str                              # the primary's IP address (v4 or v6)
    port: int = Field(default=53, ge=1, le=65535)
    zone: str                                # gateways' dns_name live in this zone
    key_name: str | None = None              # default: the name in key_file's key block
    key_algorithm: str | None = None         # default: the algorithm in key_file's key block
    key_file: str                            # the secret: never inline, never logged, never returned by the API
    ttl: int = Field(default=60, ge=0, le=86400)
    # ddns_refresh: every record is sent again this often even when nothing changed (repairs hand edits).
    refresh: float = Field(default=120.0, gt=0)
    # How often the gateways' addresses (and the forwards, for machine records) are looked at.
    check_interval: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)  # per update (TCP connect + answer)
    retry_initial: float = Field(default=1.0, gt=0)
    retry_max: float = Field(default=60.0, gt=0)
    # Optional: a zone for machines: <machine name>.<machine_zone> A -> its addresses while it has enabled forwards,
    # and one TXT record per forward ("tcp/22 -> alice.lab.example.net:4000"). May be the same as `zone`.
    machine_zone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        return refuse_inline_secrets(data, DDNS_INLINE_SECRET_KEYS,
                                     "ddns.{key} is not accepted: the TSIG secret is only read from a file named by "
                                     "ddns.key_file (e.g. the output of `tsig-keygen -a hmac-sha256 NAME`)")

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            raise ValueError("ddns.server must be an IP address (the zone's primary server)") from None

    @field_validator("zone", "machine_zone")
    @classmethod
    def _zone(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else dns_name_text(v, f"ddns.{info.field_name}")

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}\.?", v):
            raise ValueError("ddns.key_name must be a key name such as 'labgate-ddns' (letters, digits, '.', '_', '-')")
        return None if v is None else v.rstrip(".").lower()

    @field_validator("key_algorithm")
    @classmethod
    def _algorithm(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in TSIG_ALGORITHMS:
            raise ValueError(f"ddns.key_algorithm must be one of {', '.join(TSIG_ALGORITHMS)}")
        return None if v is None else v.lower()

    @model_validator(mode="after")
    def _checks(self) -> "DdnsConfig":
        if self.retry_max < self.retry_initial:
            raise ValueError("ddns.retry_max must not be less than ddns.retry_initial")
        key = self.load_key()  # fail at start, not at the first update
        self.key_name, self.key_algorithm = key.name, key.algorithm
        return self

    def load_key(self) -> TsigKey:
        """Read key_file now (it is read again before every update, so a rotated secret needs no restart)."""
        return load_tsig_key(self.key_file, self.key_name, self.key_algorithm)

    @property
    def server_text(self) -> str:
        return f"[{self.server}]:{self.port}" if ":" in self.server else f"{self.server}:{self.port}"


class Settings(BaseModel):
    """The whole configuration of one labgate process."""

    # A mistaken inline secret must not be echoed back in the error message.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    server: ServerConfig = Field(default_factory=ServerConfig)
    gateway: list[GatewayConfig] = Field(default_factory=lambda: [GatewayConfig()])
    compat: CompatConfig = Field(default_factory=CompatConfig)
    # [[sink]] tables: where events (connections, health changes) are delivered.
    sink: list[SinkConfig] = Field(default_factory=list)
    # [ddns]: keep gateways' (and optionally machines') names right in DNS; absent = off.
    ddns: DdnsConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> "Settings":
        if not self.gateway:
            raise ValueError("at least one [[gateway]] is needed")
        seen: set[str] = set()
        for gw in self.gateway:
            if gw.table_name in seen:
                raise ValueError(f"gateway name {gw.name!r} is used twice (or differs only by '-' vs '_')")
            seen.add(gw.table_name)
        return self

    @model_validator(mode="after")
    def _sink_names(self) -> "Settings":
        sink_names(self.sink)  # raises on duplicate names
        return self

    @model_validator(mode="after")
    def _compat_gateway(self) -> "Settings":
        if self.compat.vlab_enabled and self.compat.gateway is None and len(self.gateway) != 1:
            raise ValueError("compat.gateway must name the gateway the vLab API acts on (there are several)")
        if self.compat.gateway is not None and self.get_gateway(self.compat.gateway) is None:
            raise ValueError(f"compat.gateway {self.compat.gateway!r} is not one of the [[gateway]] names")
        return self

    @model_validator(mode="after")
    def _ddns(self) -> "Settings":
        named = [g for g in self.gateway if g.dns_name]
        for gw in self.gateway:
            if gw.ddns_interface and not gw.dns_name:
                raise ValueError(f"gateway {gw.name!r} has ddns_interface but no dns_name to publish")
        if self.ddns is None:
            if named:
                raise ValueError(f"gateway {named[0].name!r} has a dns_name but there is no [ddns] section "
                                 "(server, zone, key_file)")
            return self
        if not named and not self.ddns.machine_zone:
            raise ValueError("[ddns] has nothing to publish: give a gateway a dns_name, or set ddns.machine_zone")
        zone = dns.name.from_text(self.ddns.zone)
        seen: dict[str, str] = {}
        for gw in named:
            assert gw.dns_name
            if not dns.name.from_text(gw.dns_name).is_subdomain(zone):
                raise ValueError(f"gateway {gw.name!r}: dns_name {gw.dns_name!r} is not inside ddns.zone "
                                 f"{self.ddns.zone!r}")
            if gw.dns_name in seen:
                raise ValueError(f"gateways {seen[gw.dns_name]!r} and {gw.name!r} have the same dns_name")
            seen[gw.dns_name] = gw.name
        return self

    @property
    def compat_gateway(self) -> GatewayConfig:
        """The gateway the vLab compatibility API acts on."""
        if self.compat.gateway is not None:
            found = self.get_gateway(self.compat.gateway)
            assert found is not None
            return found
        return self.gateway[0]

    def get_gateway(self, name: str) -> GatewayConfig | None:
        return next((g for g in self.gateway if g.name == name), None)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the TOML file at `path` (or $LABGATE_CONFIG; none = the embedded defaults)."""
    path = path or os.environ.get("LABGATE_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    try:
        server = ServerConfig(**data.pop("server", {}))
        return Settings(server=server, **data)
    except ValueError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: {exc}") from None
