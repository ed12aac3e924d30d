"""Event delivery against real receivers: an rsyslog started here (UDP, TCP, mutual TLS), a local HTTP server,
real files, and a TCP server that never reads. When rsyslog or openssl is missing these tests fail under CI=true
and are skipped otherwise (install: apt-get install rsyslog rsyslog-gnutls openssl)."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import time
import tomllib
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labgate.config.sinks import FileSinkConfig, SinkConfig, SyslogSinkConfig, WebhookSinkConfig, sink_names
from labgate.events import Event, describe
from labgate.workers.events import EventBus
from labgate.workers.sinks import build_sinks
from labgate.workers.sinks.base import DeliveryPolicy
from labgate.workers.sinks.file import JsonLinesFileSink
from labgate.workers.sinks.webhook import WebhookSink
from tests.harness import free_port, require
from tests.services.rsyslog import Rsyslog, TlsFiles, find_rsyslogd, make_tls_files, parse_rfc5424

FAST_RETRY = dict(retry_initial=0.05, retry_max=0.3)
SD = "labgate@32473"


def _require_rsyslog() -> None:
    try:
        find_rsyslogd()
    except RuntimeError as exc:
        require(False, str(exc))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    _require_rsyslog()
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def collector(tmp_path_factory, tls_files) -> Iterator[Rsyslog]:
    """One rsyslog with UDP, TCP and TLS inputs shared by the format tests (each test uses its own marker)."""
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"), tls_files)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_tls_collector(tmp_path, tls_files) -> Iterator[Rsyslog]:
    """A started rsyslog with a TLS input for one test, which may stop it."""
    server = Rsyslog(tmp_path / "rsyslog-tls", tls_files)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_collector(tmp_path) -> Iterator[Rsyslog]:
    """A TCP-only rsyslog for one test, not started: the test stops and starts it."""
    _require_rsyslog()
    server = Rsyslog(tmp_path / "rsyslog")
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_bus(sinks, stop_timeout: float = 3.0, **kw) -> Iterator[EventBus]:
    bus = EventBus(sinks, **kw)
    bus.start()
    try:
        yield bus
    finally:
        bus.stop(timeout=stop_timeout)


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def connection(i: int, owner: str, **override) -> Event:
    fields = dict(gateway="lab", forward_id=100 + i, owner=owner, name=f"vm{i}", protocol="tcp",
                  src_ip="192.0.2.7", src_port=40000 + i, external_port=4000 + i, target_ip="10.9.0.5",
                  target_port=22)
    fields.update(override)
    return Event.new("connection", **fields)


def marker() -> str:
    return "t" + uuid.uuid4().hex[:10]


def owned_by(owner: str):
    return lambda line: f'owner="{owner}"' in line


def syslog_config(transport: str, port: int, tls: TlsFiles | None = None, **kw) -> SyslogSinkConfig:
    args: dict = dict(type="syslog", name=f"syslog-{transport}", transport=transport, host="127.0.0.1", port=port,
                      hostname="gw-test", **FAST_RETRY)
    if transport == "tls" and tls is not None:
        args.update(ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    args.update(kw)
    return SyslogSinkConfig(**args)


def seq_of(line: str) -> int:
    return int(parse_rfc5424(line).sd[SD]["seq"])


# --- syslog format and transports --------------------------------------------------------------------------------

def test_udp_tcp_and_tls_deliver_well_formed_rfc5424(collector, tls_files):
    owner = marker()
    configs = [syslog_config(t, collector.ports[t], tls_files) for t in ("udp", "tcp", "tls")]
    with running_bus(build_sinks(configs)) as bus:
        published = [bus.publish(connection(i, owner)) for i in range(3)]
        published.append(bus.publish(connection(3, owner, name='we"ird\\na]me', protocol="udp")))
        assert all(published)
        received = {t: collector.wait_for(t, owned_by(owner), len(published)) for t in ("udp", "tcp", "tls")}
        wait_until(lambda: all(s.delivered == len(published) for s in bus.stats().values()), what="delivered")
        stats = bus.stats()
    expected = {e.seq: e for e in published}
    for transport, lines in received.items():
        assert len(lines) == len(published), transport
        parsed = [parse_rfc5424(line) for line in lines]
        if transport != "udp":  # a stream keeps publish order
            assert [int(p.sd[SD]["seq"]) for p in parsed] == sorted(expected)
        for msg in parsed:
            event = expected[int(msg.sd[SD]["seq"])]
            assert (msg.pri, msg.facility, msg.severity, msg.version) == (134, 16, 6, 1)
            assert msg.timestamp == event.time  # UTC, to the microsecond
            assert (msg.hostname, msg.app_name, msg.procid, msg.msgid) == ("gw-test", "labgate", str(os.getpid()),
                                                                           "connection")
            assert list(msg.sd) == [SD]
            assert msg.sd[SD] == {"seq": str(event.seq), **{k: str(v) for k, v in event.fields.items()}}
            assert msg.msg == describe(event)
        weird = next(p for p in parsed if p.sd[SD]["protocol"] == "udp")
        assert weird.sd[SD]["name"] == 'we"ird\\na]me'  # '"', '\' and ']' escaped on the wire, intact here
        assert stats[f"syslog-{transport}"].delivered == len(published)
        assert stats[f"syslog-{transport}"].dropped == 0


def test_tcp_batch_is_split_by_octet_counting_not_merged(collector):
    """40 messages in one write; one carries a line feed inside (LF framing would cut it in two)."""
    owner = marker()
    bus = EventBus(build_sinks([syslog_config("tcp", collector.ports["tcp"])]))
    published = [bus.publish(connection(i, owner)) for i in range(39)]
    published.append(bus.publish(connection(39, owner, name="two\nlines")))
    bus.start()  # everything is queued before the worker runs: one batch, one sendall
    try:
        lines = collector.wait_for("tcp", owned_by(owner), 40)
        assert bus.stats()["syslog-tcp"].retries == 0
    finally:
        bus.stop(timeout=3)
    assert len(lines) == 40
    assert [seq_of(line) for line in lines] == [e.seq for e in published]
    # rsyslog escapes control characters on reception: the LF stayed inside its own message.
    assert parse_rfc5424(lines[-1]).sd[SD]["name"] == "two#012lines"


@contextmanager
def descriptors_from(lowest: int) -> Iterator[None]:
    """Within the block, a new descriptor is numbered `lowest` or more: the soft RLIMIT_NOFILE is raised (within
    the hard limit) and every free number below `lowest` is taken by a dup of /dev/null. Both are undone after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = lowest + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        require(False, f"the hard descriptor limit ({hard}) is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need if soft == resource.RLIM_INFINITY else max(soft, need), hard))
    held: list[int] = []
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
        while held[-1] < lowest - 1:
            held.append(os.dup(held[0]))  # the lowest free number each time: the holes fill up first
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stream_sinks_work_on_descriptors_above_1023(collector, tls_files):
    """labgate serve raises its descriptor limit, so a sink's socket may be numbered above 1023, where select()
    refuses it: the sink took that for a closed connection, reconnected before every TCP batch, and never sent a
    TLS one (its check for the collector refusing our certificate always said "closed"). poll() has no such bound."""
    owner = marker()
    sinks = build_sinks([syslog_config(t, collector.ports[t], tls_files) for t in ("tcp", "tls")])
    try:
        with descriptors_from(1100):
            for sink in sinks:
                sink.send([connection(1, owner)])
                sock = sink._sock  # the connection the batch went on
                assert sock is not None and sock.fileno() >= 1100, sink.type  # the test is about such a socket
                sink.send([connection(2, owner)])
                assert sink._sock is sock, f"{sink.type} reconnected for its second batch"
        for transport in ("tcp", "tls"):
            lines = collector.wait_for(transport, owned_by(owner), 2)
            assert [parse_rfc5424(line).sd[SD]["name"] for line in lines] == ["vm1", "vm2"], transport
    finally:
        for sink in sinks:
            sink.close()


def test_tls_refuses_a_collector_it_cannot_verify_and_needs_our_certificate(own_tls_collector, tls_files):
    collector = own_tls_collector
    owner = marker()
    port = collector.ports["tls"]
    configs = [
        syslog_config("tls", port, tls_files, name="wrong-name", server_name="wrong.example"),
        syslog_config("tls", port, tls_files, name="wrong-ca", ca_file=str(tls_files.other_ca)),
        SyslogSinkConfig(type="syslog", name="no-client-cert", transport="tls", host="127.0.0.1", port=port,
                         ca_file=str(tls_files.ca), **FAST_RETRY),
        syslog_config("tls", port, tls_files, name="good", server_name="localhost"),
    ]
    with running_bus(build_sinks(configs), stop_timeout=0.5) as bus:
        bus.publish(connection(1, owner))
        collector.wait_for("tls", owned_by(owner), 1)
        wait_until(lambda: all(bus.stats()[n].retries >= 2 for n in ("wrong-name", "wrong-ca", "no-client-cert")),
                   what="failed attempts")
        stats = bus.stats()
    assert "Hostname mismatch" in stats["wrong-name"].last_error
    assert "certificate verify failed" in stats["wrong-ca"].last_error
    assert "closed by the collector right after the handshake" in stats["no-client-cert"].last_error
    for name in ("wrong-name", "wrong-ca", "no-client-cert"):
        assert stats[name].delivered == 0 and stats[name].connected is False
    assert stats["good"].delivered == 1
    # Once rsyslogd has exited, everything it received is in its file: only the good sink's copy arrived.
    collector.stop()
    assert len([line for line in collector.lines("tls") if owned_by(owner)(line)]) == 1


def test_stopped_collector_gets_the_events_buffered_while_it_was_down(own_collector, caplog):
    caplog.set_level(logging.INFO, logger="labgate.events")
    rs = own_collector
    rs.start()
    owner = marker()
    sinks = build_sinks([syslog_config("tcp", rs.ports["tcp"])])
    with running_bus(sinks) as bus:
        first = [bus.publish(connection(i, owner)) for i in range(10)]
        rs.wait_for("tcp", owned_by(owner), 10)
        rs.stop()
        during = [bus.publish(connection(i, owner)) for i in range(10, 30)]
        wait_until(lambda: bus.stats()["syslog-tcp"].retries >= 2, what="retries while the collector is down")
        down = bus.stats()["syslog-tcp"]
        assert down.queued == 20 and down.connected is False and "connecting to" in down.last_error
        rs.start()
        lines = rs.wait_for("tcp", owned_by(owner), 30)
        wait_until(lambda: bus.stats()["syslog-tcp"].queued == 0, what="an empty queue")
        stats = bus.stats()["syslog-tcp"]
    assert [seq_of(line) for line in lines] == [e.seq for e in first + during]  # all, once, in order
    assert (stats.delivered, stats.dropped) == (30, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=sink_failed sink=syslog-tcp" in m for m in messages) == 1
    assert any("event=sink_recovered sink=syslog-tcp" in m for m in messages)
    assert not any(owner in m for m in messages)  # no payload in the logs


def test_overflow_drops_the_oldest_and_counts_exactly(own_collector, caplog):
    caplog.set_level(logging.WARNING, logger="labgate.events")
    rs = own_collector  # not started yet: nothing listens on its TCP port
    owner = marker()
    sinks = build_sinks([syslog_config("tcp", rs.ports["tcp"], buffer=100, batch=30)])
    with running_bus(sinks, warn_interval=60) as bus:
        published = [bus.publish(connection(i, owner)) for i in range(150)]
        # Drops of events inside a batch being sent are settled when that attempt fails.
        wait_until(lambda: bus.stats()["syslog-tcp"].dropped == 50, what="50 drops")
        retries = bus.stats()["syslog-tcp"].retries
        wait_until(lambda: bus.stats()["syslog-tcp"].retries >= retries + 2, what="two more failed attempts")
        stats = bus.stats()["syslog-tcp"]
        assert (stats.queued, stats.dropped, stats.delivered) == (100, 50, 0)  # the attempts changed nothing
        rs.start()
        lines = rs.wait_for("tcp", owned_by(owner), 100)
        wait_until(lambda: bus.stats()["syslog-tcp"].queued == 0, what="an empty queue")
        stats = bus.stats()["syslog-tcp"]
        drop_logs = [r for r in caplog.records if "event=sink_dropped" in r.getMessage()]
    assert [seq_of(line) for line in lines] == [e.seq for e in published[50:]]
    assert (stats.delivered, stats.dropped) == (100, 50)
    # Reported, but at most once per warn_interval however many drops there were.
    assert len(drop_logs) == 1 and drop_logs[0].levelno == logging.WARNING
    assert "sink=syslog-tcp" in drop_logs[0].getMessage()


def test_stop_ends_a_sink_waiting_to_retry_and_counts_what_it_held(caplog):
    """A sink backing off (here for half an hour or more) is not stuck: stop() ends its wait at once, and what it
    held is counted as dropped by the sink's own thread, not abandoned as if it hung."""
    caplog.set_level(logging.WARNING, logger="labgate.events")
    port = free_port()  # nothing listens here
    bus = EventBus(build_sinks([syslog_config("tcp", port, retry_initial=3600, retry_max=3600)]))
    bus.start()
    for i in range(25):
        bus.publish(connection(i, "nobody"))
    wait_until(lambda: bus.stats()["syslog-tcp"].retries >= 1, what="a failed attempt")
    assert bus.stop(timeout=10) is False
    stats = bus.stats()["syslog-tcp"]
    assert (stats.queued, stats.delivered, stats.dropped, stats.retries) == (0, 0, 25, 1)
    unflushed = [r.getMessage() for r in caplog.records if "event=sink_unflushed" in r.getMessage()]
    assert unflushed == ["event=sink_unflushed sink=syslog-tcp dropped=25"]  # no "reason=stuck"


# --- a sink that hangs ----------------------------------------------------------------------------------------------

def test_publish_never_blocks_when_a_sink_hangs(tmp_path, caplog):
    """A TCP server that accepts connections but never reads: the syslog sink's writes block, and publish,
    the other sink and stop() carry on regardless."""
    caplog.set_level(logging.WARNING, logger="labgate.events")
    N = 4000
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted connections
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        hung = syslog_config("tcp", server.getsockname()[1], name="hung", buffer=1000, send_timeout=60)
        file_sink = FileSinkConfig(type="file", name="file", path=str(tmp_path / "events.jsonl"), buffer=N)
        bus = EventBus(build_sinks([hung, file_sink]))
        bus.start()
        padding = "x" * 4000
        published = [bus.publish(connection(i, "hang", note=padding)) for i in range(N)]
        wait_until(lambda: bus.stats()["file"].delivered == N, what="the file sink")
        hung = bus.stats()["hung"]
        # ~16 MB for a peer that reads nothing: the sink's write blocks for good. Every publish came back
        # meanwhile; had one waited for that write, the write would have timed out (send_timeout) and been retried.
        assert all(published) and hung.retries == 0 and hung.connected and hung.delivered < N
        assert bus.stop(timeout=1.0) is False
    finally:
        server.close()
    # stop() found the sink inside its write, not failing and retrying: it abandoned it and counted what it held.
    [unflushed] = [r.getMessage() for r in caplog.records if "event=sink_unflushed sink=hung" in r.getMessage()]
    assert unflushed.endswith("reason=stuck")
    final = bus.stats()
    assert final["hung"].delivered + final["hung"].dropped == N and final["hung"].queued == 0
    assert (final["file"].delivered, final["file"].dropped) == (N, 0)


# --- JSON lines file ------------------------------------------------------------------------------------------------

def test_file_sink_rotates_without_losing_a_line(tmp_path):
    path = tmp_path / "log" / "events.jsonl"  # the directory is created on first write
    sink = JsonLinesFileSink("file", path, max_bytes=4096, backups=60,
                             policy=DeliveryPolicy(max_batch=37, retry_initial=0.05, retry_max=0.3))
    with running_bus([sink]) as bus:
        published = [bus.publish(connection(i, "files")) for i in range(300)]
        wait_until(lambda: bus.stats()["file"].delivered == 300, what="300 lines")
        os.rename(path, tmp_path / "log" / "moved-away.jsonl")  # as logrotate would, while the sink has it open
        published += [bus.publish(connection(i, "files")) for i in range(300, 400)]
        wait_until(lambda: bus.stats()["file"].delivered == 400, what="400 lines")
    files = sorted((tmp_path / "log").iterdir())
    assert len(files) > 10 and len(files) < 61  # rotated many times, never past the backups
    seqs = []
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 4096 and data.endswith(b"\n")
        file_seqs = [json.loads(line)["seq"] for line in data.decode().splitlines()]
        assert file_seqs == sorted(file_seqs)
        seqs += file_seqs
    assert sorted(seqs) == [e.seq for e in published]  # every line exactly once
    last = json.loads(path.read_text().splitlines()[-1])
    assert last == published[-1].to_dict() and last["time"].endswith("Z")


# --- webhook --------------------------------------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        with srv.lock:  # type: ignore[attr-defined]
            srv.calls += 1  # type: ignore[attr-defined]
            status = 500 if srv.calls <= srv.fail_first else 200  # type: ignore[attr-defined]
            srv.requests.append((status, self.headers.get("Authorization"),  # type: ignore[attr-defined]
                                 self.headers.get("Content-Type"), json.loads(body)))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def webhook_server(fail_first: int) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    srv.lock, srv.calls, srv.fail_first = threading.Lock(), 0, fail_first  # type: ignore[attr-defined]
    srv.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_webhook_posts_batches_and_retries_after_a_500(tmp_path):
    token_file = tmp_path / "webhook.token"
    token_file.write_text("s3cret-token\n")
    with webhook_server(fail_first=1) as srv:
        cfg = WebhookSinkConfig(type="webhook", url=f"http://127.0.0.1:{srv.server_address[1]}/hooks/labgate",
                                token_file=str(token_file), batch=10, timeout=5, **FAST_RETRY)
        bus = EventBus(build_sinks([cfg]))
        published = [bus.publish(connection(i, "hooks")) for i in range(25)]
        bus.start()
        wait_until(lambda: bus.stats()["webhook-1"].delivered == 25, what="25 delivered")
        assert bus.stop(timeout=2) is True
        requests = list(srv.requests)
    stats = bus.stats()["webhook-1"]
    assert (stats.retries, stats.dropped, stats.last_error) == (1, 0, "POST http://127.0.0.1:%d: HTTP 500"
                                                                  % srv.server_address[1])
    assert all(auth == "Bearer s3cret-token" and ctype == "application/json" for _, auth, ctype, _ in requests)
    failed, accepted = requests[0], requests[1:]
    assert failed[0] == 500 and [e["seq"] for e in failed[3]["events"]] == [e.seq for e in published[:10]]
    assert all(status == 200 and len(body["events"]) <= 10 for status, _, _, body in accepted)
    delivered = [e for _, _, _, body in accepted for e in body["events"]]
    assert delivered == [e.to_dict() for e in published]  # the failed batch again, then the rest, each once


class HugeAnswer:
    """A collector on a raw socket that answers a POST with 200 and a 64 MiB body (declared, or chunked without a
    length), written until the body is done or the client closes the connection: `sent` says how far it got."""

    TOTAL = 64 * 1024 * 1024
    CHUNK = 64 * 1024

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.cut_short: bool | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            framing = b"Transfer-Encoding: chunked" if self.chunked else b"Content-Length: %d" % self.TOTAL
            payload = b"x" * self.CHUNK
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framing + b"\r\n\r\n")
                while self.sent < self.TOTAL:
                    conn.sendall(b"%x\r\n%s\r\n" % (self.CHUNK, payload) if self.chunked else payload)
                    self.sent += self.CHUNK
                if self.chunked:
                    conn.sendall(b"0\r\n\r\n")
                self.cut_short = False
            except OSError:  # the client closed the connection (EPIPE or a reset)
                self.cut_short = True
            finally:
                self.done.set()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_webhook_does_not_read_a_huge_answer(chunked: bool) -> None:
    """(Issue 11: the answer was read whole into memory; a 400 MB one took labgate from 43 to 847 MiB.) The sink
    reads at most 64 KiB of an answer and closes the connection: the collector sees it closed long before it has
    written its 64 MiB (a reader taking it all would let it finish)."""
    collector = HugeAnswer(chunked)
    sink = WebhookSink("webhook-huge", f"http://127.0.0.1:{collector.port}/hook", timeout=30)
    try:
        sink.send([connection(1, "huge")])  # a 200: delivered
        assert sink.connected
        assert collector.done.wait(60), "the collector is still writing"
        assert collector.cut_short is True, f"the whole answer was read ({collector.sent} bytes)"
        assert collector.sent < HugeAnswer.TOTAL
    finally:
        sink.close()
        collector.close()


# --- the bus itself -------------------------------------------------------------------------------------------------

def test_recent_keeps_the_last_events_and_filters_them():
    bus = EventBus(recent_size=50, first_seq=1)
    for i in range(80):
        bus.publish(connection(i, "alice" if i % 2 else "bob", gateway="lab" if i < 70 else "lab2"))
    bus.publish(Event.new("health", gateway="lab", address="10.9.0.5", state="down"))
    assert [e.seq for e in bus.recent(limit=3)] == [79, 80, 81]
    assert len(bus.recent(limit=1000)) == 50 and bus.recent(limit=1000)[0].seq == 32
    assert [e.seq for e in bus.recent(kind="health")] == [81]
    assert [e.fields["owner"] for e in bus.recent(owner="alice", gateway="lab2")] == ["alice"] * 5
    assert [e.seq for e in bus.recent(forward_id=150)] == [51]
    assert [e.seq for e in bus.recent(since_seq=60, limit=4)] == [61, 62, 63, 64]  # oldest first after since_seq
    assert bus.recent(since_seq=81) == [] and bus.recent(limit=0) == []
    assert bus.publish("not an event") is None  # type: ignore[arg-type]  # never raises
    line = json.loads(bus.recent(limit=1)[0].to_json())
    assert line == {"seq": 81, "time": line["time"], "kind": "health", "gateway": "lab", "address": "10.9.0.5",
                    "state": "down"}


def test_event_validation():
    with pytest.raises(ValueError):
        Event.new("Bad Kind")
    with pytest.raises(ValueError):
        Event.new("connection", seq=1)  # reserved
    with pytest.raises(TypeError):
        Event.new("connection", src=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Event.new("connection", rtt=float("nan"))
    event = Event.new("connection", forward_id=1)
    with pytest.raises(TypeError):
        event.fields["forward_id"] = 2  # type: ignore[index]


# --- configuration --------------------------------------------------------------------------------------------------

class _Settings(BaseModel):
    """The shape Settings gets: `sink: list[SinkConfig]` from `[[sink]]` tables."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    sink: list[SinkConfig] = Field(default_factory=list)


def test_sink_config_from_toml(tmp_path, tls_files):
    token = tmp_path / "token"
    token.write_text("abc\n")
    text = f"""
[[sink]]
type = "syslog"
transport = "tls"
host = "collector.example.org"
ca_file = "{tls_files.ca}"
cert_file = "{tls_files.client_cert}"
key_file = "{tls_files.client_key}"

[[sink]]
type = "syslog"
transport = "udp"
host = "192.0.2.10"
kinds = ["health"]

[[sink]]
type = "file"
path = "{tmp_path}/events.jsonl"
max_bytes = 1048576
backups = 3

[[sink]]
type = "webhook"
name = "ops"
url = "https://hooks.example.org/labgate"
token_file = "{token}"
"""
    settings = _Settings(**tomllib.loads(text))
    assert [type(s).__name__ for s in settings.sink] == ["SyslogSinkConfig", "SyslogSinkConfig", "FileSinkConfig",
                                                          "WebhookSinkConfig"]
    assert sink_names(settings.sink) == ["syslog-1", "syslog-2", "file-1", "ops"]
    tls, udp = settings.sink[0], settings.sink[1]
    assert (tls.effective_port, udp.effective_port, tls.buffer, tls.facility) == (6514, 514, 10_000, "local0")
    sinks = build_sinks(settings.sink)
    assert [s.type for s in sinks] == ["syslog/tls", "syslog/udp", "file", "webhook"]
    assert sinks[1].policy.kinds == frozenset({"health"})

    bad = [
        ({"type": "webhook", "url": "https://h/x", "token": "s3cret"}, "secrets are read from files"),
        ({"type": "webhook", "url": "https://user:s3cret@h/x"}, "must not carry credentials"),
        ({"type": "syslog", "host": "h", "transport": "tcp", "ca_file": str(tls_files.ca)}, "only apply to"),
        ({"type": "syslog", "host": "h", "transport": "tls", "ca_file": "/nonexistent/ca.pem"}, "cannot be read"),
        ({"type": "syslog", "host": "h", "transport": "sctp"}, "transport"),
        ({"type": "file", "path": "x", "backups": 0}, "backups"),
        ({"type": "kafka"}, "does not match any of the expected tags"),
        ({"type": "syslog", "host": "h", "facility": "local9"}, "facility must be one of"),
    ]
    for entry, reason in bad:
        with pytest.raises(ValidationError) as info:
            _Settings(sink=[entry])
        assert reason in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="used twice"):
        sink_names(_Settings(sink=[{"type": "file", "path": "a", "name": "x"},
                                   {"type": "file", "path": "b", "name": "x"}]).sink)
