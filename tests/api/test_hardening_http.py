"""The server's own defences, against the real server in this process (tests/harness.py runs what `labgate serve`
runs): the token before the body, body limits, per-token rate limits, header/body deadlines, the connection bound
(TLS handshakes included), /healthz outside the thread pool, 405 with Allow, OpenAPI, security headers."""

from __future__ import annotations

import pytest

import asyncio
import datetime
import ipaddress
import socket
import ssl
import sqlite3
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import anyio
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import labgate
from labgate.config import Settings
from tests.api.conftest import FORWARDS, assert_error, db_file, gw
from tests.conftest import make_settings
from tests.harness import Server, running_server

LABGATE_SRC = str(Path(labgate.__file__).parent)
WAIT = 60  # seconds: the bound on waiting for something that must happen (never asserted as a duration)


def settings_for(url: str, **server) -> Settings:
    settings = make_settings(url, gateways=[gw(port_range=["4000-4999"])])
    for key, value in server.items():
        setattr(settings.server, key, value)
    return settings


@contextmanager
def server_with(url: str, **server) -> Iterator[Server]:
    with running_server(settings_for(url, **server)) as srv:
        yield srv


def port_of(srv: Server) -> int:
    return urlsplit(srv.url).port


def connect(srv: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=WAIT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of an answer"
        body += chunk
    return status, headers, body[:length]


# --- the token before the body; body limits --------------------------------------------------------------------

def test_unauthenticated_post_is_answered_401_before_its_body_is_sent(database_url: str) -> None:
    with server_with(database_url) as srv, connect(srv) as sock:
        size = 50 * 1024 * 1024
        sock.sendall(f"POST {FORWARDS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode() + b"{" + b" " * 1000)
        # Nothing more is sent: the answer can only come before the body.
        status, headers, body = read_answer(sock)
        assert status == 401, body
        assert headers["www-authenticate"] == "Bearer"
        assert httpx.Response(401, content=body).json()["error"]["code"] == "unauthorized"


def test_bodies_over_the_limit_are_413_and_normal_ones_pass(database_url: str) -> None:
    with server_with(database_url, max_body_bytes=4096) as srv:
        token = srv.token("alice")
        auth = f"Authorization: Bearer {token}\r\n"
        # Content-Length over the limit: 413 before a byte of the body is sent.
        with connect(srv) as sock:
            sock.sendall(f"POST {FORWARDS} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5000\r\n\r\n".encode())
            status, _, body = read_answer(sock)
            assert status == 413, body
            assert httpx.Response(413, content=body).json()["error"]["code"] == "too_large"
        # A chunked body is counted while it arrives: 413 once it went over, before its last chunk.
        with connect(srv) as sock:
            sock.sendall(f"POST {FORWARDS} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode())
            for _ in range(3):
                sock.sendall(b"800\r\n" + b" " * 0x800 + b"\r\n")  # 3 x 2 KiB, never the final 0-chunk
            status, _, body = read_answer(sock)
            assert status == 413, body
        # Under the limit nothing changes: a JSON body, chunked or not, creates the forward.
        with srv.client(token) as c:
            padded = b'{"target_address": "10.9.0.5", "target_port": 22}' + b" " * 4000  # just under 4 KiB
            resp = c.post(FORWARDS, content=padded, headers={"Content-Type": "application/json"})
            assert resp.status_code == 201, resp.text
            chunks = iter([b'{"target_address": "10.9.0.6", ', b'"target_port": 22}'])
            resp = c.post(FORWARDS, content=chunks)
            assert resp.status_code == 201, resp.text


def test_an_early_answer_leaves_the_connection_usable(database_url: str) -> None:
    """After a 401 sent before the body, the rest of the body is read and dropped; the connection goes on."""
    with server_with(database_url) as srv, connect(srv) as sock:
        body = b"x" * 300_000
        sock.sendall(f"POST {FORWARDS} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert read_answer(sock)[0] == 401
        sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, answer = read_answer(sock)
        assert status == 200 and b'"status"' in answer


# --- per-token rate limit ------------------------------------------------------------------------------------------

def test_a_token_over_its_rate_gets_429_with_retry_after(database_url: str) -> None:
    # 0.001 a second: the bucket does not refill during the test, so exactly `burst` requests pass.
    with server_with(database_url, rate_limit=0.001, rate_limit_burst=3) as srv:
        alice, bob = srv.token("alice"), srv.token("bob")
        with srv.client(alice) as a, srv.client(bob) as b:
            assert [a.get(FORWARDS).status_code for _ in range(3)] == [200, 200, 200]
            resp = a.get(FORWARDS)
            err = assert_error(resp, 429, "rate_limited")
            assert int(resp.headers["retry-after"]) >= 1
            assert "retry after" in err["message"]
            assert a.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}).status_code == 429
            # another token has its own bucket; unauthenticated requests are 401, not counted against anyone
            assert b.get(FORWARDS).status_code == 200
            with srv.client("lg_not_a_token") as anon:
                assert anon.get(FORWARDS).status_code == 401
            assert srv.client().__enter__().get("/healthz").status_code == 200


def test_rate_limit_zero_is_off(database_url: str) -> None:
    with server_with(database_url, rate_limit=0, rate_limit_burst=1) as srv, srv.client(srv.token("alice")) as c:
        assert {c.get(FORWARDS).status_code for _ in range(5)} == {200}


# --- deadlines and the connection bound ----------------------------------------------------------------------------

def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(database_url: str) -> None:
    with server_with(database_url, header_timeout=0.5) as srv:
        with connect(srv) as idle:
            assert read_until_closed(idle) == b""
        with connect(srv) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the final empty line
            answer = read_until_closed(slow)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
        # a client that sends its request answers as always
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200


def test_a_body_that_stalls_is_dropped_after_the_body_timeout(database_url: str) -> None:
    with server_with(database_url, body_timeout=0.5) as srv:
        token = srv.token("alice")
        with connect(srv) as sock:
            sock.sendall(f"POST {FORWARDS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Length: 100\r\n\r\n{{\"target_".encode())
            assert read_until_closed(sock) == b""
        with srv.client(token) as c:
            assert c.get(FORWARDS).json()["count"] == 0  # nothing was created from half a body


def test_connections_beyond_the_bound_get_503_and_room_comes_back(database_url: str) -> None:
    with server_with(database_url, max_connections=4, header_timeout=120) as srv:
        held = [connect(srv) for _ in range(4)]
        try:
            # The server accepts in order: the fifth finds four counted and is refused at once.
            with connect(srv) as fifth:
                status, headers, body = read_answer(fifth)
                assert status == 503, body
                assert headers["retry-after"] == "1" and headers["connection"] == "close"
                assert httpx.Response(503, content=body).json()["error"]["code"] == "too_many_connections"
            # A held (counted) connection is served normally.
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(held[0])[0] == 200
        finally:
            for sock in held:
                sock.close()
        # Closed connections give their room back.
        assert healthz_once_room(srv) == 200


def healthz_once_room(srv: Server) -> int:
    """GET /healthz, retried while the server still counts connections the client already closed."""
    for _ in range(200):
        with connect(srv) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status = read_answer(sock)[0]
        if status != 503:
            return status
        threading.Event().wait(0.05)
    return 503


# --- TLS: handshakes are counted and timed like the rest ---------------------------------------------------------

def write_certificate(folder: Path, name: str = "labgate test") -> tuple[Path, Path, bytes]:
    """A self-signed certificate for 127.0.0.1 (and its key) in `folder`; returns (cert, key, DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS handshake with 127.0.0.1:port gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, ctx.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


def silent_pair(srv: Server) -> list[socket.socket]:
    """Two silent connections the server accepted and counted. The probe connection before them may still be
    counted for a moment (its close not yet seen), and then the second of them is refused at once: retry."""
    for _ in range(50):
        pair = [connect(srv) for _ in range(2)]
        refused = False
        for sock in pair:
            sock.settimeout(0.5)
            try:
                refused = refused or sock.recv(1) is not None  # data or EOF: the server refused it
            except socket.timeout:
                pass  # silent and open: accepted and counted
            sock.settimeout(WAIT)
        if not refused:
            return pair
        for sock in pair:
            sock.close()
    raise AssertionError("the server never held two silent connections")


def test_tls_handshakes_count_against_the_bound_and_time_out(database_url: str, tmp_path: Path) -> None:
    cert, key, der = write_certificate(tmp_path / "tls")
    with server_with(database_url, tls_cert_file=str(cert), tls_key_file=str(key), max_connections=2,
                     header_timeout=120) as srv:
        assert served_certificate(port_of(srv)) == der
        stuck = silent_pair(srv)  # TCP connected, never a ClientHello, both counted by the server
        try:
            # A third client does not even get a handshake: the two silent ones hold the room.
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with connect(srv) as raw:
                try:
                    ctx.wrap_socket(raw).close()  # the handshake (a refused connection is closed before it)
                    refused = False
                except (ssl.SSLError, ConnectionError):
                    refused = True
            assert refused, "a TLS handshake succeeded while max_connections handshakes were in progress"
        finally:
            for sock in stuck:
                sock.close()
        with httpx.Client(base_url=srv.url, verify=False, timeout=WAIT) as c:
            for _ in range(200):  # until the server saw the two close
                try:
                    resp = c.get("/healthz")
                    break
                except httpx.HTTPError:
                    threading.Event().wait(0.05)
            assert resp.status_code == 200
            assert resp.headers["strict-transport-security"].startswith("max-age=")
    with server_with(database_url, tls_cert_file=str(cert), tls_key_file=str(key), header_timeout=0.5) as srv:
        with connect(srv) as silent:
            assert read_until_closed(silent) == b""  # no ClientHello within header_timeout: closed


def test_a_request_sent_with_the_tls_finished_message_is_answered(database_url: str, tmp_path: Path) -> None:
    """The client's last handshake message and its request in one segment: the request arrives while the
    connection is still being handed to the HTTP side, and must not be lost."""
    cert, key, _ = write_certificate(tmp_path / "tls")
    with server_with(database_url, tls_cert_file=str(cert), tls_key_file=str(key)) as srv, connect(srv) as sock:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(outgoing.read())  # Finished + request, one send
        answer = b""
        while b'"status"' not in answer:
            data = sock.recv(65536)
            assert data, f"closed without an answer: {answer!r}"
            incoming.write(data)
            try:
                while chunk := tls.read(65536):
                    answer += chunk
            except ssl.SSLWantReadError:
                pass
        assert answer.startswith(b"HTTP/1.1 200 "), answer


# --- /healthz answers while the thread pool is full ----------------------------------------------------------------

def busy_pool_threads() -> int:
    """AnyIO worker threads (FastAPI's thread pool) currently running labgate code."""
    frames = sys._current_frames()
    busy = 0
    for thread in threading.enumerate():
        if thread.name != "AnyIO worker thread":
            continue
        frame = frames.get(thread.ident)
        while frame is not None:
            if frame.f_code.co_filename.startswith(LABGATE_SRC):
                busy += 1
                break
            frame = frame.f_back
    return busy


async def _pool_size() -> int:
    return int(anyio.to_thread.current_default_thread_limiter().total_tokens)


@pytest.mark.sqlite_only  # about SQLite's own files and locks
def test_healthz_answers_while_the_thread_pool_is_saturated(sqlite_url: str) -> None:
    pool = anyio.run(_pool_size)
    creates = 300
    with server_with(sqlite_url) as srv:
        token = srv.token("alice")
        # Hold SQLite's write lock: every create then waits for it in a pool thread (30 s busy timeout).
        lock = sqlite3.connect(db_file(sqlite_url), timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        locked = True

        async def scenario() -> None:
            nonlocal locked
            limits = httpx.Limits(max_connections=creates + 10, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits,
                                         headers={"Authorization": f"Bearer {token}"}) as c:
                posts = [asyncio.create_task(c.post(FORWARDS, json={"target_address": "10.9.0.5",
                                                                    "target_port": i + 1}))
                         for i in range(creates)]
                while busy_pool_threads() < pool:  # the pool is provably full of waiting creates
                    assert not any(p.done() for p in posts), [p.result().text for p in posts if p.done()][:1]
                    await asyncio.sleep(0.05)
                health = asyncio.create_task(c.get("/healthz"))
                done, _ = await asyncio.wait([health, *posts], return_when=asyncio.FIRST_COMPLETED)
                assert health in done, "a create finished before /healthz: it waited for the thread pool"
                assert busy_pool_threads() >= pool, "the pool was no longer full when /healthz answered"
                assert not any(p.done() for p in posts)
                assert health.result().status_code == 200
                assert health.result().json() == {"status": "ok"}
                lock.rollback()
                locked = False
                results = await asyncio.gather(*posts)
                assert {r.status_code for r in results} == {201}, {r.text for r in results if r.status_code != 201}

        try:
            asyncio.run(scenario())
        finally:
            if locked:
                lock.rollback()
            lock.close()


# --- 405, OpenAPI, security headers, docs --------------------------------------------------------------------------

def test_405_names_every_method_of_the_path(database_url: str) -> None:
    with server_with(database_url) as srv, srv.client(srv.token("alice")) as c:
        resp = c.post(f"{FORWARDS}/1")
        assert_error(resp, 405, "method_not_allowed")
        assert set(resp.headers["allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}
        resp = c.put(FORWARDS)
        assert resp.status_code == 405
        assert set(resp.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_openapi_documents_401_413_429_on_every_authenticated_operation(database_url: str) -> None:
    with server_with(database_url) as srv, srv.client() as c:
        spec = c.get("/openapi.json").json()
    authenticated = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
                     if isinstance(op, dict) and op.get("security")]
    assert len(authenticated) >= 8
    for path, method, op in authenticated:
        missing = {"401", "413", "429"} - set(op["responses"])
        assert not missing, f"{method.upper()} {path} does not document {missing}"
        ref = op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_security_headers_on_every_answer_and_docs_still_load(database_url: str) -> None:
    common = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
    with server_with(database_url) as srv, srv.client() as anon, srv.client(srv.token("alice")) as alice:
        answers = [alice.get(FORWARDS), anon.get(FORWARDS), anon.get("/healthz"), alice.post(f"{FORWARDS}/1"),
                   alice.get(f"{FORWARDS}/999"), anon.get("/openapi.json")]
        for resp in answers:
            assert {k: resp.headers.get(k) for k in common} == common, (resp.request.url, resp.headers)
            assert resp.headers.get("cache-control") == "no-store", resp.request.url
            assert "strict-transport-security" not in resp.headers  # plain HTTP
        docs = anon.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert docs.headers["x-frame-options"] == "DENY"
        assets = [a for a in _asset_urls(docs.text) if a.startswith("/")]
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
        for asset in assets:
            resp = anon.get(asset)
            assert resp.status_code == 200, asset
            assert resp.headers["x-content-type-options"] == "nosniff"
        redoc = anon.get("/redoc")
        assert redoc.status_code == 200
        for asset in (a for a in _asset_urls(redoc.text) if a.startswith("/")):
            assert anon.get(asset).status_code == 200, asset


def _asset_urls(html: str) -> list[str]:
    import re

    return re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html) + \
        re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)


# --- the numbers behind the defaults (pure) --------------------------------------------------------------------------

def test_connection_bound_follows_the_descriptor_limit() -> None:
    from labgate.api.http import HttpLimits
    from labgate.config import ServerConfig

    default = ServerConfig(database="sqlite:///:memory:")
    assert HttpLimits.for_server(default, 1024).max_connections == 768      # systemd's soft limit: 256 kept
    assert HttpLimits.for_server(default, 65536).max_connections == 1024    # at most 1024
    assert HttpLimits.for_server(default, 256).max_connections == 128       # a small limit: half kept
    for nofile in (256, 1024, 4096, 65536):
        limits = HttpLimits.for_server(default, nofile)
        assert limits.max_connections + limits.backlog <= nofile - 64, limits  # a burst of accepts stays clear
    explicit = ServerConfig(database="sqlite:///:memory:", max_connections=50)
    assert HttpLimits.for_server(explicit, 1024).max_connections == 50


def test_token_bucket_refills_at_its_rate() -> None:
    from labgate.api.middleware import TokenBuckets

    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("t", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("t", now=100.0) == 0.5            # one more in half a second
    assert buckets.take("other", now=100.0) == 0.0        # buckets are per token
    assert buckets.take("t", now=100.5) == 0.0            # refilled one
    assert buckets.take("t", now=100.5) == 0.5
    assert [buckets.take("t", now=1000.0) for _ in range(4)][-1] == 0.5   # never more than the burst
