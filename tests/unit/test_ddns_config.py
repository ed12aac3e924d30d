"""[ddns] and the gateways' dns_name / ddns_interface: what loads, what is refused and how it is said, and that
the TSIG secret never appears in an error or a dump. Pure: no DNS server (tests/services/test_ddns.py has one)."""

from __future__ import annotations

import base64

import pytest

from labgate.config import ConfigError, load_settings

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def write(tmp_path, text: str, key: str | None = None):
    if key is not None:
        (tmp_path / "ddns.key").write_text(key)
    p = tmp_path / "labgate.toml"
    p.write_text(text.replace("KEYFILE", str(tmp_path / "ddns.key")))
    return p


BIND_KEY = f'key "labgate-ddns" {{\n\talgorithm hmac-sha512;\n\tsecret "{SECRET}";\n}};\n'
BASE = '''
[ddns]
server = "192.0.2.53"
zone = "Lab.Example.NET."
key_file = "KEYFILE"
{extra}

[[gateway]]
name = "alice"
external_address = "198.51.100.1"
dns_name = "alice.lab.example.net"
{gw}
'''


def config(extra: str = "", gw: str = "") -> str:
    return BASE.format(extra=extra, gw=gw)


def test_a_bind_key_file_gives_name_and_algorithm(tmp_path):
    s = load_settings(write(tmp_path, config(gw='ddns_interface = "ext0"'), BIND_KEY))
    d = s.ddns
    assert d is not None
    assert (d.server, d.port, d.zone, d.key_name, d.key_algorithm) == ("192.0.2.53", 53, "lab.example.net",
                                                                        "labgate-ddns", "hmac-sha512")
    assert (d.ttl, d.refresh, d.check_interval, d.machine_zone) == (60, 120.0, 5.0, None)
    assert d.load_key().secret == SECRET and SECRET not in repr(d.load_key())
    gw = s.gateway[0]
    assert gw.dns_name == "alice.lab.example.net" and gw.ddns_interface == "ext0"


def test_a_bare_secret_needs_name_and_algorithm(tmp_path):
    with pytest.raises(ConfigError, match="key_name and ddns.key_algorithm are needed"):
        load_settings(write(tmp_path, config(), SECRET + "\n"))
    s = load_settings(write(tmp_path, config('key_name = "gw"\nkey_algorithm = "HMAC-SHA256"\n'
                                             'machine_zone = "m.lab.example.net"\nrefresh = 30'), SECRET + "\n"))
    assert s.ddns and (s.ddns.key_name, s.ddns.key_algorithm, s.ddns.refresh) == ("gw", "hmac-sha256", 30)
    assert s.ddns.machine_zone == "m.lab.example.net"


def test_no_ddns_section_means_off(tmp_path):
    s = load_settings(write(tmp_path, '[[gateway]]\nname = "a"\n'))
    assert s.ddns is None and s.gateway[0].dns_name is None


@pytest.mark.parametrize("extra, gw, key, words", [
    ("", "", BIND_KEY.replace("hmac-sha512", "hmac-md5"), "not supported"),
    ('key_algorithm = "hmac-sha256"', "", BIND_KEY, "says algorithm hmac-sha512, the config says hmac-sha256"),
    ('key_name = "other"', "", BIND_KEY, "no key named 'other'"),
    ("", "", BIND_KEY.replace(SECRET, "not base64!!"), "not valid base64"),
    ("", "", BIND_KEY + BIND_KEY.replace("labgate-ddns", "second"), "several keys"),
    (f'secret = "{SECRET}"', "", BIND_KEY, "only read from a file"),
    ('server = "dns.example.net"', "", BIND_KEY, "IP address"),
    ('zone = "other.example.net"', "", BIND_KEY, "not inside ddns.zone"),
    ("", 'ddns_interface = "bad/name"', BIND_KEY, "ddns_interface"),
    ("retry_initial = 10\nretry_max = 1", "", BIND_KEY, "retry_max"),
    ('key_algorithm = "md5"', "", BIND_KEY, "key_algorithm must be one of"),
])
def test_bad_ddns_config_says_what_is_wrong(tmp_path, extra, gw, key, words):
    text = config(extra, gw)
    if extra.startswith(("server", "zone")):
        field = extra.split("=")[0].strip()
        text = "\n".join(line for line in text.splitlines() if not line.startswith(field + " ")) + "\n"
        text = text.replace("[ddns]", "[ddns]\n" + extra)
    with pytest.raises(ConfigError, match=words) as info:
        load_settings(write(tmp_path, text, key))
    assert SECRET not in str(info.value)


def test_missing_key_file_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(write(tmp_path, config()))  # no key file written
    with pytest.raises(ConfigError, match="no \\[ddns\\] section"):
        load_settings(write(tmp_path, '[[gateway]]\nname = "a"\ndns_name = "a.example.net"\n'))
    with pytest.raises(ConfigError, match="no dns_name"):
        load_settings(write(tmp_path, '[[gateway]]\nname = "a"\nddns_interface = "eth0"\n'))
    with pytest.raises(ConfigError, match="nothing to publish"):
        load_settings(write(tmp_path, '[ddns]\nserver = "127.0.0.1"\nzone = "x.test"\nkey_file = "KEYFILE"\n',
                            BIND_KEY))


def test_two_gateways_cannot_share_a_name(tmp_path):
    text = config() + '\n[[gateway]]\nname = "bob"\ndns_name = "alice.lab.example.net."\n'
    with pytest.raises(ConfigError, match="same dns_name"):
        load_settings(write(tmp_path, text, BIND_KEY))


def test_the_secret_is_not_in_the_dumped_config(tmp_path):
    s = load_settings(write(tmp_path, config(), BIND_KEY))
    assert SECRET not in s.model_dump_json() and SECRET not in repr(s)
