"""A throwaway BIND 9 for tests (no systemd): `named -g -c named.conf` on 127.0.0.1 and a free port, primary for
the zones it is given, accepting RFC 2136 updates signed with the TSIG keys made here by `tsig-keygen`
(`update-policy { grant KEY zonesub ANY; }`). Queried with dnspython, independently of labgate's code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from tests.harness import free_port, stop_process

PACKAGES = "apt-get install bind9 bind9-utils bind9-dnsutils"


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)
    if path is None:
        raise RuntimeError(f"{name} not found: {PACKAGES}")
    return path


def find_named() -> tuple[str, str]:
    """Paths of named and tsig-keygen; raises RuntimeError naming the Debian packages when missing."""
    return _tool("named"), _tool("tsig-keygen")


def tsig_keygen(name: str, algorithm: str, path: Path) -> Path:
    """A BIND key file (`key "NAME" { algorithm ...; secret "..."; };`) made by the real tsig-keygen."""
    _, keygen = find_named()
    out = subprocess.run([keygen, "-a", algorithm, name], capture_output=True, text=True, timeout=30, check=True)
    path.write_text(out.stdout)
    path.chmod(0o600)
    return path


def key_secret(path: Path) -> str:
    import re

    found = re.search(r'secret "([^"]+)"', path.read_text())
    assert found, path
    return found.group(1)


@dataclass
class Key:
    name: str
    algorithm: str
    file: Path


class Bind:
    """One named process. start()/stop() may be called again (a test can take the server down and up)."""

    def __init__(self, directory: Path, zones: list[str], keys: dict[str, str], port: int | None = None,
                 grant: list[str] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.zones = zones
        self.port = port or free_port()
        self.keys = {name: Key(name, alg, tsig_keygen(name, alg, self.dir / f"{name}.key"))
                     for name, alg in keys.items()}
        self.grant = list(self.keys) if grant is None else grant  # keys allowed to update (the others: REFUSED)
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "named.log"
        self._write_config()

    def _write_config(self) -> None:
        d = self.dir
        grants = " ".join(f"grant {k} zonesub ANY;" for k in self.grant)
        conf = [
            "options {",
            f'  directory "{d}";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            "  recursion no;",
            "  notify no;",
            "  dnssec-validation no;",
            f'  pid-file "{d}/named.pid";',
            f'  session-keyfile "{d}/session.key";',
            '  managed-keys-directory "' + str(d) + '";',
            "};",
            "controls { };",
        ]
        conf += [f'include "{k.file}";' for k in self.keys.values()]
        for zone in self.zones:
            zone_file = d / f"{zone}.zone"
            if not zone_file.exists():
                zone_file.write_text(
                    f"$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n"
                    f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n")
            conf.append(f'zone "{zone}" {{ type primary; file "{zone_file}"; update-policy {{ {grants} }}; }};')
        (d / "named.conf").write_text("\n".join(conf) + "\n")

    def start(self, timeout: float = 20) -> None:
        named, _ = find_named()
        with open(self.log, "ab") as log:
            # -g: foreground, log to stderr; as root without -u it stays root, so its journal files are writable.
            self.proc = subprocess.Popen([named, "-g", "-c", str(self.dir / "named.conf")], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"named exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if self.serial(self.zones[0], timeout=0.5) is not None:
                    return
            except (dns.exception.DNSException, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"named did not answer within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    # --- looking at the zone, independently of labgate ---------------------------------------------------------
    def query(self, name: str, rdtype: str, timeout: float = 2) -> list[str]:
        """The rdatas of NAME/TYPE as text, sorted ([] for NXDOMAIN or no data)."""
        q = dns.message.make_query(name, rdtype)
        answer = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=timeout)
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RuntimeError(f"query {name} {rdtype}: {dns.rcode.to_text(answer.rcode())}")
        out = []
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                out += [r.to_text() for r in rrset]
        return sorted(out)

    def serial(self, zone: str, timeout: float = 2) -> int | None:
        q = dns.message.make_query(zone, "SOA")
        answer = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)
        for rrset in answer.answer:
            for r in rrset:
                return r.serial
        return None

    def update(self, zone: str, key: str, build) -> int:
        """Send an update signed with one of this server's keys (for tests that edit the zone by hand)."""
        k = self.keys[key]
        name = dns.name.from_text(k.name)
        alg = dns.name.from_text(k.algorithm)
        msg = dns.update.UpdateMessage(zone, keyring={name: dns.tsig.Key(name, key_secret(k.file), alg)},
                                       keyname=name, keyalgorithm=alg)
        build(msg)
        return dns.query.tcp(msg, "127.0.0.1", port=self.port, timeout=5).rcode()
