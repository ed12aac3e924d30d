"""Configuration: file, environment overrides, and clear errors."""

import pytest

from labgate.config import ConfigError, load_settings, parse_port_range


def write(tmp_path, text):
    p = tmp_path / "labgate.toml"
    p.write_text(text)
    return p


def test_issue_example_loads(tmp_path):
    s = load_settings(write(tmp_path, '''
[server]
listen = "127.0.0.1:3000"
database = "sqlite:///var/lib/labgate/labgate.db"

[[gateway]]
name = "default"
netns = ""
external_address = "198.51.100.1"
port_range = "4000-4100"
target_networks = ["10.9.0.0/24"]
masquerade = true
'''))
    gw = s.gateway[0]
    assert gw.ranges == [(4000, 4100)] and gw.table_name == "labgate_default"
    assert s.server.host_port == ("127.0.0.1", 3000)


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LABGATE_DATABASE", "sqlite:///elsewhere.db")
    s = load_settings(write(tmp_path, '[server]\ndatabase = "sqlite:///file.db"\n'))
    assert s.server.database == "sqlite:///elsewhere.db"


def test_embedded_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("LABGATE_CONFIG", raising=False)
    s = load_settings()
    assert [g.name for g in s.gateway] == ["default"] and s.gateway[0].netns == ""


@pytest.mark.parametrize("text, words", [
    ('[[gateway]]\nname = "a"\nport_range = ["4000-4100", "4050-4200"]\n', "overlap"),
    ('[[gateway]]\nname = "a"\n[[gateway]]\nname = "a"\n', "used twice"),
    ('[[gateway]]\nname = "Bad Name"\n', "gateway name"),
    ('[[gateway]]\nname = "a"\nnetns = "../etc"\n', "netns"),
    ('[[gateway]]\nname = "a"\nbogus = 1\n', "bogus"),
    ('[server\n', "not valid TOML"),
])
def test_bad_config_says_what_is_wrong(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("text, expected", [("4000-4100", (4000, 4100)), ("22", (22, 22)), (" 1 - 2 ", (1, 2))])
def test_port_ranges(text, expected):
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["0-10", "10-5", "1-65536", "a-b", ""])
def test_bad_port_ranges(text):
    with pytest.raises(ValueError):
        parse_port_range(text)
