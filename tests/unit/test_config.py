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
    s = load_settings(write(tmp_path, '[server]\ndatabase = "sqlite:///file.db"\ndata_dir = "/srv/lg"\n'))
    assert s.server.database == "sqlite:////srv/lg/elsewhere.db"


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


# --- where the database is: one fixed place, whatever the current directory ---------------------------------------
def test_a_relative_sqlite_path_lives_in_the_data_dir_not_the_current_directory(tmp_path, monkeypatch):
    from labgate.config import ServerConfig

    monkeypatch.chdir(tmp_path)
    assert ServerConfig(data_dir="/srv/lg").database == "sqlite:////srv/lg/labgate.db"
    assert ServerConfig(data_dir="/srv/lg", database="sqlite:///sub/x.db").database == "sqlite:////srv/lg/sub/x.db"
    # absolute paths, memory and other databases are left as they are
    assert ServerConfig(data_dir="/srv/lg", database="sqlite:////tmp/a.db").database == "sqlite:////tmp/a.db"
    assert ServerConfig(data_dir="/srv/lg", database="sqlite://").database == "sqlite://"
    pg = "postgresql+psycopg://lg:pw@db.example.net/labgate"
    assert ServerConfig(data_dir="/srv/lg", database=pg).database == pg


def test_data_dir_from_the_environment_and_its_defaults(tmp_path, monkeypatch):
    import os

    from labgate.config import ServerConfig, default_data_dir

    monkeypatch.setenv("LABGATE_DATA_DIR", str(tmp_path / "d"))
    assert ServerConfig().database == f"sqlite:///{tmp_path}/d/labgate.db"
    monkeypatch.delenv("LABGATE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    expected = "/var/lib/labgate" if os.geteuid() == 0 else f"{tmp_path}/xdg/labgate"
    assert default_data_dir() == expected
    with pytest.raises(ValueError, match="absolute"):
        ServerConfig(data_dir="relative/dir")
    with pytest.raises(ValueError, match="not a database URL"):
        ServerConfig(data_dir="/srv", database="no url at all")


def test_the_database_is_shown_without_its_password():
    from labgate.config import database_display

    shown = database_display("postgresql+psycopg://lg:s3cret@db.example.net/labgate")
    assert "s3cret" not in shown and "db.example.net/labgate" in shown


def test_token_create_says_which_database_it_wrote_to_from_any_directory(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LABGATE_DATA_DIR": str(tmp_path / "data")}
    outs = []
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        done = subprocess.run([sys.executable, "-m", "labgate", "token", "create", "alice"], cwd=cwd, env=env,
                              capture_output=True, text=True, check=True)
        assert done.stdout.strip().startswith("lg_") and "\n" not in done.stdout.strip()
        assert f"stored in sqlite:///{tmp_path}/data/labgate.db" in done.stderr
        outs.append(done.stdout)
    listed = subprocess.run([sys.executable, "-m", "labgate", "token", "ls"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True).stdout
    assert len(listed.strip().splitlines()) == 2  # both went to the one database
    assert not (tmp_path / "a" / "var").exists()
