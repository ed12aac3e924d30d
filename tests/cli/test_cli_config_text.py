"""The client config file holds any text the user gives (issue 11, item 9): `labgate login --host` with a character
outside the BMP (an emoji) used to write a surrogate-pair escape that TOML refuses, after which no command could
read the file. Now every value is written as valid TOML and read back; a file an earlier version wrote that way is
read as meant; a file that cannot be read says which file, where, and how to fix it - never "delete it"."""

from __future__ import annotations

import tomllib

from tests.cli.conftest import Cli, Lab, assert_cli_error

FOX = "\U0001F98A"  # 🦊, outside the Basic Multilingual Plane


def contexts(cli: Cli) -> dict[str, dict]:
    return {c["name"]: c for c in cli("context", "ls", "-o", "json").json()}


def test_login_with_an_emoji_host_writes_a_config_every_command_reads(cli: Cli, lab: Lab) -> None:
    host = f"{FOX}.lab.example.net"
    cli("login", "--url", lab.url, "--token", "-", "--host", host, input=lab.tokens["alice"] + "\n").ok()
    assert tomllib.loads(cli.config.read_text(encoding="utf-8"))["contexts"]["default"]["host"] == host
    assert contexts(cli)["default"]["host"] == host
    assert cli("forward", "ls", "-o", "json").json() == []
    assert cli("gateway", "ls", "-o", "json").json()[0]["name"] == "default"
    # and it can be written again (another login, a context switch) and still read
    cli("login", "--url", lab.url, "--token", "-", "--context", "two", input=lab.tokens["bob"] + "\n").ok()
    cli("context", "use", "default").ok()
    assert contexts(cli)["default"]["host"] == host and contexts(cli)["two"]["url"] == lab.url


def test_names_and_values_with_any_characters_round_trip(cli: Cli, lab: Lab) -> None:
    name = f"café-{FOX}"
    host = 'a "quoted" \\ host\x7fwith\ttab'
    cli("login", "--url", lab.url, "--token", "-", "--context", name, "--host", host, "--no-verify",
        input=lab.tokens["alice"] + "\n").ok()
    got = contexts(cli)
    assert got[name]["host"] == host and got[name]["current"] is True
    assert cli("forward", "ls", "-o", "json").json() == []


def test_a_file_written_by_an_earlier_version_is_read_as_meant(cli: Cli, lab: Lab) -> None:
    cli.config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # exactly what the earlier version wrote for --host 🦊.lab (json.dumps: a surrogate pair)
    cli.config.write_text(f'current = "default"\n\n[contexts.default]\nurl = "{lab.url}"\n'
                          f'token = "{lab.tokens["alice"]}"\nhost = "\\ud83e\\udd8a.lab"\n')
    assert contexts(cli)["default"]["host"] == f"{FOX}.lab"
    assert cli("forward", "ls", "-o", "json").json() == []
    cli("context", "use", "default").ok()  # rewritten: now valid TOML for any reader
    assert tomllib.loads(cli.config.read_text(encoding="utf-8"))["contexts"]["default"]["host"] == f"{FOX}.lab"


def test_an_unreadable_file_names_the_file_the_place_and_the_fix(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, lab.tokens["alice"])
    text = cli.config.read_text()
    cli.config.write_text(text.replace('[contexts.default]', '[contexts.default'))
    before = cli.config.read_bytes()
    for args in (("forward", "ls"), ("context", "ls"), ("login", "--url", lab.url, "--token", "-", "--no-verify")):
        err, hint = assert_cli_error(cli(*args, input="lg_x\n"), 2, str(cli.config), "line 2", hint=str(cli.config))
        assert "delete" not in (err + hint).lower() and "remove" not in (err + hint).lower()
        assert "text editor" in hint
    assert cli.config.read_bytes() == before  # nothing overwrote or removed it


def test_a_file_that_is_not_utf8_is_reported_with_its_line(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, lab.tokens["alice"], host="gw")
    cli.config.write_bytes(cli.config.read_bytes().replace(b'"gw"', b'"g\xffw"'))
    assert_cli_error(cli("forward", "ls"), 2, str(cli.config), "not UTF-8", "line 5", hint=str(cli.config))


def test_a_file_of_the_wrong_shape_is_reported_not_a_crash(cli: Cli, lab: Lab) -> None:
    cli.config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cli.config.write_text('current = "default"\ncontexts = "oops"\n')
    assert_cli_error(cli("forward", "ls"), 2, str(cli.config), "[contexts]", hint=str(cli.config))


def test_bytes_that_are_not_utf8_on_the_command_line_are_refused_before_writing(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, lab.tokens["alice"])
    before = cli.config.read_bytes()
    res = cli("login", "--url", lab.url, "--token", "-", "--no-verify", "--host", b"g\xffw".decode(
        "utf-8", "surrogateescape"), input="lg_x\n")
    assert_cli_error(res, 2, "host", "not UTF-8")
    assert cli.config.read_bytes() == before
