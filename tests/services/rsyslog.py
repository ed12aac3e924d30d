"""A throwaway rsyslog collector for tests (no systemd): `rsyslogd -n -f CONF -i PIDFILE` on loopback with UDP,
TCP and mutual-TLS (gtls) inputs, each writing the raw received message, one per line, to its own file.

Also: test certificates made with `openssl`, and an RFC 5424 parser written from the RFC's ABNF (independent of
labgate's formatter, so the tests check the format rather than agree with themselves).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.harness import free_port, stop_process


def find_rsyslogd() -> str:
    """Path of rsyslogd and its TLS driver; raises RuntimeError naming the Debian packages when missing."""
    path = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
    if path is None:
        raise RuntimeError("rsyslogd not found: apt-get install rsyslog rsyslog-gnutls")
    gtls = [*Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"), *Path("/usr/lib/rsyslog").glob("lmnsd_gtls.so")]
    if not gtls:
        raise RuntimeError("rsyslog's gtls driver (lmnsd_gtls.so) not found: apt-get install rsyslog-gnutls")
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found: apt-get install openssl")
    return path


# --- certificates -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying the collector with it must fail


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (EC P-256, valid 2 days)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=labgate test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, cn in (("server", "localhost"), ("client", "labgate-gateway")):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext", cwd=d)
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
                    d / "other-ca.pem")


# --- the collector --------------------------------------------------------------------------------------------------

def _bound(port: int, proto: str) -> bool:
    """Whether something on this host listens on 127.0.0.1:port (TCP LISTEN) or has the UDP port bound."""
    want = f"0100007F:{port:04X}"
    table = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    for line in table:
        cols = line.split()
        if cols[1] == want and (proto == "udp" or cols[3] == "0A"):
            return True
    return False


class Rsyslog:
    """One rsyslogd; `start()`/`stop()` may be repeated (same ports, same output files, appended)."""

    def __init__(self, root: Path, tls: TlsFiles | None = None, *, tcp_port: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.ports = {"udp": free_port(), "tcp": tcp_port or free_port()}
        if tls is not None:
            self.ports["tls"] = free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = root / "rsyslog.conf"
        self.conf.write_text(self._config())

    def output(self, transport: str) -> Path:
        return self.root / f"{transport}.log"

    def _config(self) -> str:
        tls = self.tls
        certs = (f'\n  DefaultNetstreamDriverCAFile="{tls.ca}" DefaultNetstreamDriverCertFile="{tls.server_cert}"'
                 f'\n  DefaultNetstreamDriverKeyFile="{tls.server_key}"') if tls else ""
        lines = [
            f'global(workDirectory="{self.root}" net.enableDNS="off"{certs})',
            'module(load="imudp")',
            'module(load="imtcp")',
            # The message exactly as received (for TCP: without the octet count), one per line.
            'template(name="raw" type="string" string="%rawmsg%\\n")',
        ]
        for transport in self.ports:
            lines.append(f'ruleset(name="{transport}") {{ action(type="omfile" file="{self.output(transport)}" '
                         'template="raw") }')
        lines.append(f'input(type="imudp" address="127.0.0.1" port="{self.ports["udp"]}" ruleset="udp")')
        lines.append(f'input(type="imtcp" address="127.0.0.1" port="{self.ports["tcp"]}" ruleset="tcp")')
        if tls:
            # Mutual TLS: the client must show a certificate signed by our CA.
            lines.append(f'input(type="imtcp" address="127.0.0.1" port="{self.ports["tls"]}" ruleset="tls" '
                         'streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")')
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None, "already running"
        log = open(self.root / "rsyslogd.out", "ab")
        self.proc = subprocess.Popen([find_rsyslogd(), "-n", "-f", str(self.conf), "-i", str(self.root / "pid")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        wanted = [(p, "udp" if t == "udp" else "tcp") for t, p in self.ports.items()]
        while not all(_bound(port, proto) for port, proto in wanted):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = (self.root / "rsyslogd.out").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"rsyslogd did not start listening on {self.ports}: {out[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (a clean close of every connection, like a real restart), SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def lines(self, transport: str) -> list[str]:
        path = self.output(transport)
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
        return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a line being written

    def wait_for(self, transport: str, predicate, count: int, timeout: float = 15.0) -> list[str]:
        """The lines matching `predicate`, once there are at least `count` of them (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines(transport) if predicate(line)]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{transport}: {len(found)} of {count} messages arrived: {found[-3:]}"
                return found
            time.sleep(0.05)


# --- RFC 5424 parsing ---------------------------------------------------------------------------------------------

_HEADER = re.compile(
    r"<(?P<pri>[0-9]{1,3})>(?P<version>[1-9][0-9]{0,2}) "
    r"(?P<timestamp>-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    r"(?P<hostname>[!-~]{1,255}) (?P<app_name>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) ")
_SD_NAME = re.compile(r'[!#-<>-\\^-~]{1,32}')


@dataclass
class Syslog5424:
    pri: int
    version: int
    timestamp: datetime | None
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


def parse_rfc5424(line: str) -> Syslog5424:
    """Parse one RFC 5424 message strictly; raises ValueError saying where it is malformed."""
    m = _HEADER.match(line)
    if not m:
        raise ValueError(f"not an RFC 5424 header: {line[:120]!r}")
    pri = int(m["pri"])
    if pri > 191:
        raise ValueError(f"PRI {pri} > 191")
    ts = None if m["timestamp"] == "-" else datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00"))
    rest = line[m.end():]
    sd: dict[str, dict[str, str]] = {}
    if rest.startswith("-"):
        i = 1
    else:
        i = 0
        while i < len(rest) and rest[i] == "[":
            name = _SD_NAME.match(rest, i + 1)
            if not name:
                raise ValueError(f"bad SD-ID at {rest[i:i + 40]!r}")
            sd_id, i = name.group(), name.end()
            if sd_id in sd:
                raise ValueError(f"SD-ID {sd_id} repeated")
            params: dict[str, str] = {}
            while rest[i] == " ":
                pname = _SD_NAME.match(rest, i + 1)
                if not pname or rest[pname.end():pname.end() + 2] != '="':
                    raise ValueError(f"bad SD-PARAM at {rest[i:i + 40]!r}")
                i = pname.end() + 2
                value = []
                while rest[i] != '"':
                    if rest[i] == "\\" and rest[i + 1] in '"\\]':
                        value.append(rest[i + 1])
                        i += 2
                    elif rest[i] == "]":
                        raise ValueError("unescaped ']' in PARAM-VALUE")
                    else:
                        value.append(rest[i])
                        i += 1
                params[pname.group()] = "".join(value)
                i += 1
            if rest[i] != "]":
                raise ValueError(f"SD-ELEMENT not closed at {rest[i:i + 40]!r}")
            sd[sd_id] = params
            i += 1
        if not sd:
            raise ValueError("STRUCTURED-DATA is neither '-' nor an SD-ELEMENT")
    msg = ""
    if i < len(rest):
        if rest[i] != " ":
            raise ValueError(f"no SP before MSG: {rest[i:i + 40]!r}")
        msg = rest[i + 1:]
        if msg.startswith("\ufeff"):
            msg = msg[1:]
    return Syslog5424(pri, int(m["version"]), ts, m["hostname"], m["app_name"], m["procid"], m["msgid"], sd, msg)
