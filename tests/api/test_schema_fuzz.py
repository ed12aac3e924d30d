"""Schemathesis over labgate's whole OpenAPI schema (issue 11): a real server (tests/harness.py: uvicorn, a SQLite
file, the in-memory kernel) gets generated requests for every operation, with an admin, a user and a read-only
token (every phase), and with a metrics token, which may read nothing but /metrics (the deterministic phases only).
The vLab compatibility API (/api/1/*) is on, and its operations get a vLab JWT in X-Auth instead: one vLab user per
role (the metrics phase sends none).

Every request of the run goes through `GuardedSession` (schemathesis' own probes too: a request without a token and
one with a wrong token for every operation that answered 2xx), which asserts:
- no answer is a 5xx;
- an answer in 4xx left the database (every table, read straight from the SQLite file) and the kernel
  (`FakeKernel.dump()`) exactly as they were;
- after a change answered 2xx, the kernel's maps and sets hold exactly what the committed rows say.
Schemathesis' checks assert that every answer is documented: its status code, content type, headers and body
(against the response schema); 401 without a token; 405 with Allow for a method the schema does not list; a request
the schema forbids is refused.

Bounded and deterministic: a fixed seed, derandomized generation, no example database, MAX_EXAMPLES fuzzed requests
per operation and role besides the deterministic examples and coverage phases, and no rate limit nor failed-login
limit (whether a request gets 429 would depend on the machine's speed). LABGATE_FUZZ_EXAMPLES=200 (and
LABGATE_FUZZ_SEED) run it deeper.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig

from labgate.api.app import create_app
from labgate.config import CompatConfig, GatewayConfig, Settings
from labgate.core.tokens import create_token, hash_token
from labgate.service import Labgate
from tests.api.conftest import FORWARDS, db_file
from tests.conftest import make_settings
from tests.harness import Server, running_server

SEED = int(os.environ.get("LABGATE_FUZZ_SEED", "20251111"))
MAX_EXAMPLES = int(os.environ.get("LABGATE_FUZZ_EXAMPLES", "20"))
ROLES = ("admin", "user", "readonly")  # fuzzed in every phase; "metrics" in the deterministic ones
EXT = "198.51.100.1"
# A small range and small quotas, so that a bounded run reaches port_taken, range_exhausted and quota_exceeded.
GATEWAY = GatewayConfig(name="default", external_address=EXT, port_range=["4000-4063"], target_networks=["10.9.0.0/24"])
FORWARDS_PER_OWNER, PORTS_PER_OWNER = 12, 40
VLAB_ISSUER = "https://vlab.example.test"
VLAB_USERS = {"admin": "carol", "user": "alice", "readonly": "bob"}  # a vLab caller is never an admin
TABLE = "labgate_default"
SENTINEL_KEYS = {"0.0.0.0 . tcp . 0", "4294967295"}  # render.SENTINELS: in every full render, never a forward
CHANGES = ("POST", "PUT", "PATCH", "DELETE")
# Written by a background thread at most once a minute per token after any authenticated request
# (core/tokens.py): not a change the request makes, and not made while it runs.
# Written by the background, not by requests: a token's last use, the agent's heartbeat.
BACKGROUND_COLUMNS = {("tokens", "last_used_at"), ("agents", "heartbeat_at")}

# Values that mean something to this server, drawn 70% of the time instead of random ones: without them almost every
# create is refused (a random string is no lab address) and almost every id names nothing, so the paths that change
# the database and the kernel would hardly be reached. Each list mixes good and bad values.
DICTIONARIES = {
    "addresses": ["10.9.0.5", "10.9.0.6", "10.9.0.254", "10.9.0.0", "10.9.0.255", "10.9.1.5", "192.0.2.1",
                  "198.51.100.1", "127.0.0.1", "0.0.0.0", "::1", "010.9.0.5", "10.9.0.5/32", " 10.9.0.5"],
    "ports": [22, 80, 443, 3389, 4000, 4001, 4030, 4063, 3999, 4064, 65535],
    "counts": [1, 2, 3, 8, 64, 65],
    "ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 20, 30],
    "owners": ["alice", "bob", "root", "carol", "decoy", "Alice", "_x", "a.b@c-d"],
    "networks": ["203.0.113.0/24", "203.0.113.7", "10.0.0.0/8", "10.0.0.0/9", "0.0.0.0/0", "198.51.100.0/25",
                 "2001:db8::/32", "10.9.0.0/33", "203.0.113.0/24 "],
    "gateways": ["default", "other"],
    "names": ["vm1", "vm2", "vm3", "centos1"],
    "kinds": ["CentOS", "Windows", "centos", "bad kind"],
    "times": ["2999-01-01T00:00:00Z", "2999-01-01T00:00:00+01:00", "2000-01-01T00:00:00Z"],
}
BINDINGS = {
    "body.target_address": "addresses", "body.target_port": "ports", "body.external_port": "ports",
    "body.port_count": "counts", "body.allowed_sources[*]": "networks", "body.allowed_networks[*]": "networks",
    "body.gateway": "gateways", "body.name": "names", "body.owner": "owners", "body.expires_at": "times",
    "path.forward_id": "ids", "path.token_id": "ids", "path.owner": "owners",
    "query.forward_id": "ids", "query.object_id": "ids", "query.owner": "owners", "query.actor": "owners",
    "query.gateway": "gateways", "query.name": "names", "query.target_address": "addresses",
    "query.target_port": "ports", "query.external_port": "ports",
    # the vLab API (/api/1/*)
    "body.target_addr": "addresses", "body.target_name": "names", "body.target_component": "kinds",
    "body.conn_port": "ports", "body.kind": "kinds", "query.target_addr": "addresses", "query.addr": "addresses",
    "query.component": "kinds", "query.conn_port": "ports",
}


def config(*, fuzzing: bool) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        # The token is sent by the test (see `call`), never generated; schemathesis itself tries none and a wrong one.
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                       "with-security-parameters": False},
        "dictionaries": {name: {"values": values} for name, values in DICTIONARIES.items()},
        "parameters": {key: {"dictionary": name, "probability": 0.7} for key, name in BINDINGS.items()},
        # Schema-valid is not valid here: an address in a lab network, a free port, an existing id are checked beyond
        # what JSON Schema says and answered 422/404/409 (documented): "valid data must be accepted" cannot hold.
        "checks": {"positive_data_acceptance": {"enabled": False}},
        # Stateful sequences are left out: their replay depends on a server that keeps state between examples.
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": fuzzing},
                   "stateful": {"enabled": False}},
    })


# Deviations that are known and reported, not fixed yet: (role or "*", "METHOD /path", check, text in the failure).
# Each is tolerated only exactly so, and must still happen: once it is fixed this test fails until its entry is
# removed. "database" is GuardedSession's own check (a 4xx changed the database; the text is matched against
# "<table>: <what changed>" of each changed table, and every changed table must match). E.g.
#     ("*", "POST /api/v1/forwards", "database", "sqlite_sequence:"): "a refused create takes a forward id",
# (fixed: the two found first, `GET /api/v1/audit?since=0.5` answering 200 and that one, are regression tests in
# tests/api/test_audit.py and tests/api/test_ids.py).
KNOWN_DEVIATIONS: dict[tuple[str, str, str, str], str] = {
}


# --- the state a rejected request must not change --------------------------------------------------------------
def database_state(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table of the SQLite file, read with sqlite3 (not through labgate)."""
    con = sqlite3.connect(path, timeout=30)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        state = {}
        for table in tables:
            columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')
                       if (table, r[1]) not in BACKGROUND_COLUMNS]
            select = ", ".join(f'"{c}"' for c in columns)
            state[table] = sorted(con.execute(f'SELECT {select} FROM "{table}"').fetchall(), key=repr)
        return state
    finally:
        con.close()


def differences(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> dict[str, str]:
    """table -> what changed in it."""
    out = {}
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        if old != new:
            out[table] = f"gone {[r for r in old if r not in new][:5]}, new {[r for r in new if r not in old][:5]}"
    return out


def kernel_elements(server: Server) -> dict[str, dict[str, str | None]]:
    kernel = server.kernel()
    return {name: {k: v for k, v in kernel.elements(TABLE, name).items() if k not in SENTINEL_KEYS}
            for name in ("ids", "targets", "restricted", "sources")}


def committed_elements(path: Path) -> dict[str, dict[str, str | None]]:
    """What the kernel must hold for the committed forwards (docs/design.md, "The nftables shape")."""
    con = sqlite3.connect(path, timeout=30)
    try:
        rows = con.execute(
            "SELECT f.id, p.protocol, p.port, f.external_port, f.target_address, f.target_port, f.allowed_sources "
            "FROM port_allocations p JOIN forwards f ON f.id = p.forward_id "
            "WHERE f.enabled AND f.gateway = 'default'").fetchall()
    finally:
        con.close()
    want: dict[str, dict[str, str | None]] = {"ids": {}, "targets": {}, "restricted": {}, "sources": {}}
    for fid, proto, port, external_port, address, target_port, sources in rows:
        key = f"{EXT} . {proto} . {port}"
        want["ids"][key] = str(fid)
        want["targets"][key] = f"{address} . {target_port + port - external_port}"
        for net in json.loads(sources or "[]"):
            want["restricted"][str(fid)] = None
            want["sources"][f"{fid} . {net}"] = None
    return want


def describe(request: requests.PreparedRequest, response: requests.Response) -> str:
    body = request.body.decode(errors="replace") if isinstance(request.body, bytes) else request.body
    return f"{request.method} {request.path_url}\n  body: {body!r}\n  -> {response.status_code} {response.text[:2000]}"


# --- the server, its users, and the session every request goes through -------------------------------------------
@dataclass
class Fuzz:
    server: Server
    db: Path
    tokens: dict[str, str]         # role -> secret
    vlab_tokens: dict[str, str]    # role -> the JWT of its vLab user (/api/1/*)
    token_ids: set[str]            # the run's own tokens: a DELETE /api/v1/tokens/{id} never revokes them ...
    decoy_token_id: int            # ... it revokes this one instead
    role: str = ""                 # the role under test now
    deviations: set[tuple[str, str, str, str]] = field(default_factory=set)  # KNOWN_DEVIATIONS seen


def known(fuzz: Fuzz, operation: str, check: str, message: str) -> bool:
    """Whether this failure is one of KNOWN_DEVIATIONS (then noted as seen)."""
    for entry in KNOWN_DEVIATIONS:
        who, op, name, text = entry
        if who in ("*", fuzz.role) and op == operation and name == check and text in message:
            fuzz.deviations.add(entry)
            return True
    return False


class GuardedSession(requests.Session):
    """A requests session that checks every request it sends: see the module's docstring."""

    def __init__(self, fuzz: Fuzz, operation: str) -> None:
        super().__init__()
        self.fuzz = fuzz
        self.operation = operation

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        server = self.fuzz.server
        db_before, kernel_before = database_state(self.fuzz.db), server.kernel().dump()
        response = super().send(request, **kwargs)
        status = response.status_code
        assert status < 500, f"server error:\n{describe(request, response)}"
        if 400 <= status < 500:
            db_after = database_state(self.fuzz.db)
            changed = differences(db_before, db_after)
            if changed and all(known(self.fuzz, self.operation, "database", f"{table}: {what}")
                               for table, what in changed.items()):
                changed = {}
            assert not changed, (f"a {status} changed the database:\n{describe(request, response)}\n"
                                 + "\n".join(f"  {table}: {what}" for table, what in changed.items()))
            kernel_after = server.kernel().dump()
            assert kernel_after == kernel_before, (f"a {status} changed the kernel:\n{describe(request, response)}\n"
                                                   f"before:\n{kernel_before}\nafter:\n{kernel_after}")
        elif request.method in CHANGES:
            assert kernel_elements(server) == committed_elements(self.fuzz.db), (
                f"kernel and database disagree after:\n{describe(request, response)}")
        return response


def fuzz_settings(folder: Path) -> Settings:
    key = folder / "vlab.key"
    key.write_bytes(b"k" * 64)
    key.chmod(0o600)
    settings = make_settings(f"sqlite:///{folder}/labgate.db", gateways=[GATEWAY])
    settings.compat = CompatConfig(vlab_enabled=True, jwt_algorithm="HS256", jwt_key_file=str(key),
                                   jwt_issuer=VLAB_ISSUER)
    return settings


def vlab_token(settings: Settings, user: str) -> str:
    assert settings.compat.jwt_key_file is not None
    claims = {"username": user, "iss": VLAB_ISSUER, "exp": int(time.time()) + 86400, "version": 2}
    return jwt.encode(claims, Path(settings.compat.jwt_key_file).read_bytes(), algorithm="HS256")


@pytest.fixture(scope="module")
def fuzz(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    settings = fuzz_settings(tmp_path_factory.mktemp("fuzz"))
    url = settings.server.database
    settings.server.rate_limit = 0
    # Nor the failed-login limit: schemathesis sends a wrong token to every operation that answered 2xx, and after
    # 20 of them every request from 127.0.0.1 would get 429 (tests/api/test_failed_logins.py tests it).
    settings.server.failed_login_limit = 0
    settings.limits.forwards_per_owner, settings.limits.ports_per_owner = FORWARDS_PER_OWNER, PORTS_PER_OWNER
    with running_server(settings) as server:
        assert server.client().get("/openapi.json").json() == SCHEMA, "the server serves another schema"
        db = server.labgate.db
        # Something for generated ids to find: a token to revoke (id 1) and forwards of two owners (ids 1-3), one
        # restricted to a source network, one a block of 3 ports, one disabled. Alice's first is at 4001, a port the
        # vLab DELETE's generated conn_ports reach (4000 would be free for a vLab create).
        decoy = create_token(db, "decoy")
        tokens = {"admin": create_token(db, "root", admin=True), "user": create_token(db, "alice"),
                  "readonly": create_token(db, "alice", role="readonly"),
                  "metrics": create_token(db, "prometheus", role="metrics")}
        with server.client(tokens["user"]) as alice, server.client(create_token(db, "bob")) as bob:
            for client, body in ((alice, {"name": "vm1", "allowed_sources": ["203.0.113.0/24"], "external_port": 4001}),
                                 (bob, {"name": "vm2", "port_count": 3}),
                                 (alice, {"name": "vm3", "protocol": "udp", "enabled": False})):
                resp = client.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22, **body})
                assert resp.status_code == 201, resp.text
        con = sqlite3.connect(db_file(url))
        try:
            ids = {h: str(i) for h, i in con.execute("SELECT token_hash, id FROM tokens")}
        finally:
            con.close()
        vlab_tokens = {role: vlab_token(settings, user) for role, user in VLAB_USERS.items()}
        run = Fuzz(server, db_file(url), tokens, vlab_tokens, {ids[hash_token(t)] for t in tokens.values()},
                   int(ids[hash_token(decoy)]))
        yield run
    # Whether a deviation still happens is only known from a whole run (a part, e.g. `-k readonly`, may not reach it).
    selected = sum(1 for item in request.session.items if item.nodeid.startswith(f"{request.node.nodeid}::"))
    if selected == len(OPERATIONS) * (len(ROLES) + 1):
        for entry, why in KNOWN_DEVIATIONS.items():
            assert entry in run.deviations, f"fixed? then remove it from KNOWN_DEVIATIONS: {why}"


@pytest.fixture(scope="module", params=ROLES)
def role(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the schema and the tests ----------------------------------------------------------------------------------
def openapi_of(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document a server with these settings serves (built without starting anything)."""
    lg = Labgate(settings)
    try:
        return create_app(lg, manage_lifecycle=False).openapi()
    finally:
        lg.db.dispose()


def unstarted_openapi() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return openapi_of(fuzz_settings(Path(tmp)))


# pytest needs the operations when it collects the tests (one per operation), before any server runs: the schema is
# the document of an unstarted service; the fixture checks that the running server serves the same one.
# (schemathesis.pytest.from_fixture would load it from the server, but does not work with pytest >= 9.2: it sets
# the removed Node._nodeid.)
SCHEMA = unstarted_openapi()
OPERATIONS = [f"{method.upper()} {path}" for path, item in SCHEMA["paths"].items() for method in item]
schema = schemathesis.openapi.from_dict(SCHEMA, config=config(fuzzing=True))
schema_deterministic = schemathesis.openapi.from_dict(SCHEMA, config=config(fuzzing=False))
FUZZ: list[Fuzz] = []  # the run in progress, for the hook below


def tolerate_known_deviations(context, failure, case, response) -> bool:
    return not any(known(FUZZ[0], case.operation.label, check, failure.message) for check in failure.checks)


schema.hook("filter_failure")(tolerate_known_deviations)
schema_deterministic.hook("filter_failure")(tolerate_known_deviations)


def call(case, fuzz: Fuzz, role: str) -> None:
    """Send `case` with `role`'s token, through a GuardedSession, and run every check on the answer."""
    FUZZ[:] = [fuzz]
    fuzz.role = role
    if case.path == "/api/v1/tokens/{token_id}" and str(case.path_parameters.get("token_id")) in fuzz.token_ids:
        case.path_parameters["token_id"] = fuzz.decoy_token_id  # the run's own tokens stay valid
    headers = {"Authorization": f"Bearer {fuzz.tokens[role]}"}
    if case.path.startswith("/api/1/") and role in fuzz.vlab_tokens:
        headers = {"X-Auth": fuzz.vlab_tokens[role]}
    case.call_and_validate(base_url=fuzz.server.url, session=GuardedSession(fuzz, case.operation.label),
                           headers=headers)


@schema.parametrize()
def test_every_operation_answers_as_documented_and_rejections_change_nothing(case, fuzz: Fuzz, role: str) -> None:
    call(case, fuzz, role)


@schema_deterministic.parametrize()
def test_a_metrics_token_is_refused_as_documented_everywhere_but_metrics(case, fuzz: Fuzz) -> None:
    call(case, fuzz, "metrics")
