"""`labgate login` and `labgate context ls|use`, the client config file (mode 0600, folder 0700, tokens never
printed), and LABGATE_URL / LABGATE_TOKEN overriding the chosen context. The CLI runs as a real subprocess."""

from __future__ import annotations

import json
import stat
import tomllib

from tests.cli.conftest import Cli, Lab, assert_cli_error, parse_table


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_config(cli: Cli) -> dict:
    return tomllib.loads(cli.config.read_text())


def test_login_token_from_stdin_writes_private_config(cli: Cli, lab: Lab) -> None:
    token = lab.tokens["alice"]
    res = cli("login", "--url", lab.url + "/", "--token", "-", input=token + "\n").ok()
    assert "default" in res.stdout and lab.url in res.stdout
    assert token not in res.stdout + res.stderr
    assert mode(cli.config) == 0o600
    assert mode(cli.config.parent) == 0o700
    assert read_config(cli) == {"current": "default", "contexts": {"default": {"url": lab.url, "token": token}}}


def test_login_default_location_is_under_home(cli: Cli, lab: Lab) -> None:
    cli("login", "--url", lab.url, "--token", "-", input=lab.tokens["alice"], LABGATE_CLIENT_CONFIG=None).ok()
    path = cli.home / ".config" / "labgate" / "config.toml"
    assert path.is_file() and mode(path) == 0o600 and mode(path.parent) == 0o700
    assert cli("gateway", "ls", "-o", "json", LABGATE_CLIENT_CONFIG=None).json()[0]["name"] == "default"


def test_login_with_gateway_host_and_named_context(cli: Cli, lab: Lab) -> None:
    cli("login", "--url", lab.url, "--token", "-", input=lab.tokens["alice"]).ok()
    cli("login", "--url", lab.url, "--token", "-", "--context", "lab2", "--gateway", "default",
        "--host", "gw.example.test", input=lab.tokens["bob"]).ok()
    cfg = read_config(cli)
    assert cfg["current"] == "lab2"
    assert cfg["contexts"]["default"] == {"url": lab.url, "token": lab.tokens["alice"]}
    assert cfg["contexts"]["lab2"] == {"url": lab.url, "token": lab.tokens["bob"], "gateway": "default",
                                       "host": "gw.example.test"}
    assert mode(cli.config) == 0o600


def test_login_no_verify_saves_without_contacting(cli: Cli, closed_url: str) -> None:
    cli("login", "--url", closed_url, "--token", "-", "--no-verify", input="lg_whatever\n").ok()
    assert read_config(cli)["contexts"]["default"] == {"url": closed_url, "token": "lg_whatever"}


def test_login_bad_token_exits_5_and_saves_nothing(cli: Cli, lab: Lab) -> None:
    res = cli("login", "--url", lab.url, "--token", "-", input="lg_bad_token\n")
    assert_cli_error(res, 5, "invalid or revoked token", hint="log in")
    assert not cli.config.exists()
    # An existing config is left exactly as it was.
    cli.configure(lab.url, lab.tokens["alice"])
    before = cli.config.read_text()
    assert_cli_error(cli("login", "--url", lab.url, "--token", "-", "--context", "x", input="lg_bad\n"), 5)
    assert cli.config.read_text() == before


def test_login_unreachable_exits_6_and_saves_nothing(cli: Cli, closed_url: str) -> None:
    res = cli("login", "--url", closed_url, "--token", "-", input="lg_tok\n")
    assert_cli_error(res, 6, closed_url)
    assert not cli.config.exists()


def test_login_empty_token_is_refused(cli: Cli, lab: Lab) -> None:
    assert_cli_error(cli("login", "--url", lab.url, "--token", "-", input="\n"), 2, "no token", hint="token create")
    assert not cli.config.exists()


def test_context_ls_never_shows_tokens(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, lab.tokens["alice"], gateway="default",
                  extra_contexts={"other": {"url": "http://other.example:3000", "token": lab.tokens["bob"],
                                            "host": "other-gw.example"}})
    res = cli("context", "ls").ok()
    assert lab.tokens["alice"] not in res.stdout and lab.tokens["bob"] not in res.stdout
    assert parse_table(res.stdout) == [
        {"": "*", "name": "default", "url": lab.url, "gateway": "default", "host": ""},
        {"": "", "name": "other", "url": "http://other.example:3000", "gateway": "", "host": "other-gw.example"},
    ]
    data = cli("context", "ls", "-o", "json").json()
    assert data == [
        {"name": "default", "current": True, "url": lab.url, "gateway": "default", "host": None},
        {"name": "other", "current": False, "url": "http://other.example:3000", "gateway": None,
         "host": "other-gw.example"},
    ]
    assert "token" not in json.dumps(data)


def test_context_use_switches_current(cli: Cli, lab: Lab) -> None:
    cli.configure("http://127.0.0.1:9", "lg_dead",
                  extra_contexts={"real": {"url": lab.url, "token": lab.tokens["alice"]}},
                  kinds={"onefs": {"https": 8443}})
    cli.config.chmod(0o644)  # a loosened file is written back private
    res = cli("context", "use", "real").ok()
    assert "real" in res.stdout
    cfg = read_config(cli)
    assert cfg["current"] == "real" and cfg["contexts"]["real"]["token"] == lab.tokens["alice"]
    assert cfg["contexts"]["default"] == {"url": "http://127.0.0.1:9", "token": "lg_dead"}
    assert cfg["kinds"] == {"onefs": {"https": 8443}}  # other sections survive the rewrite
    assert mode(cli.config) == 0o600
    assert cli("forward", "ls", "-o", "json").json() == []  # the new current context is used


def test_context_use_unknown_exits_2_with_hint(cli: Cli, lab: Lab) -> None:
    cli.configure(lab.url, lab.tokens["alice"])
    before = cli.config.read_text()
    assert_cli_error(cli("context", "use", "nope"), 2, "no context named 'nope'", hint="context ls")
    assert cli.config.read_text() == before


def test_error_messages_show_user_text_verbatim(cli: Cli, lab: Lab) -> None:
    """Messages quote user text and must not be read as rich markup. (Bug found at commit 52c3784: `fail()` in
    cli/output.py printed the message as markup, so "[red]x" showed as 'x' and "[/x]" crashed with a MarkupError
    traceback and exit 1.)"""
    cli.configure(lab.url, lab.tokens["alice"])
    assert_cli_error(cli("context", "use", "[/x]"), 2, "no context named '[/x]'", hint="context ls")


def test_context_option_picks_a_context(cli: Cli, lab: Lab) -> None:
    lab.create("bob", name="bobs")
    cli.configure(lab.url, lab.tokens["alice"], extra_contexts={"asbob": {"url": lab.url, "token": lab.tokens["bob"]}})
    assert [f["name"] for f in cli("forward", "ls", "--context", "asbob", "-o", "json").json()] == ["bobs"]
    assert_cli_error(cli("forward", "ls", "--context", "missing"), 2, "missing", hint="context")


def test_env_url_and_token_override_the_config(cli: Cli, lab: Lab, closed_url: str) -> None:
    lab.create("bob", name="bobs")
    cli.configure(closed_url, "lg_dead")
    # URL and token from the environment win over the broken context.
    res = cli("forward", "ls", "-o", "json", LABGATE_URL=lab.url, LABGATE_TOKEN=lab.tokens["bob"])
    assert [f["name"] for f in res.json()] == ["bobs"]
    # Only the token overridden: the context's URL is still used (and is dead).
    assert_cli_error(cli("forward", "ls", LABGATE_TOKEN=lab.tokens["bob"]), 6)
    # Only the URL overridden: the context's (bad) token is sent.
    assert_cli_error(cli("forward", "ls", LABGATE_URL=lab.url), 5)


def test_env_alone_without_any_config(cli: Cli, lab: Lab) -> None:
    assert not cli.config.exists()
    res = cli("gateway", "ls", "-o", "json", LABGATE_URL=lab.url, LABGATE_TOKEN=lab.tokens["alice"])
    assert [g["name"] for g in res.json()] == ["default"]
    assert not cli.config.exists()


def test_no_config_at_all_says_to_log_in(cli: Cli) -> None:
    assert_cli_error(cli("forward", "ls"), 2, "no labgate server configured", hint="labgate login")


def test_broken_config_file_is_reported(cli: Cli) -> None:
    cli.config.parent.mkdir(parents=True)
    cli.config.write_text("current = [unterminated\n")
    assert_cli_error(cli("forward", "ls"), 2, "not valid TOML", hint=str(cli.config))


# --- URLs without a scheme (issue 9: `--url 127.0.0.1:3000` ended as "server unreachable") ------------------------
def test_login_host_port_without_scheme_assumes_http_and_says_so(cli: Cli, lab: Lab) -> None:
    host_port = lab.url.removeprefix("http://")
    res = cli("login", "--url", host_port, "--token", "-", input=lab.tokens["alice"] + "\n").ok()
    note = res.stderr.splitlines()
    assert len(note) == 1 and note[0].startswith("note: ") and f"using {lab.url}" in note[0], res
    assert read_config(cli)["contexts"]["default"]["url"] == lab.url
    assert lab.url in res.stdout
    assert cli("gateway", "ls", "-o", "json").json()[0]["name"] == "default"


def test_login_malformed_url_is_a_usage_error(cli: Cli, lab: Lab) -> None:
    port = lab.url.rsplit(":", 1)[1]
    bad = [f"127.0.0.1:{port} extra", "gw.example.net", f"ftp://127.0.0.1:{port}", "http://", "http://127.0.0.1:99999",
           f"http:/127.0.0.1:{port}", "127.0.0.1:http", f"http://127.0.0.1:{port}/?x=1", ""]
    results = cli.parallel(*[("login", "--url", url, "--token", "lg_x", "--no-verify") for url in bad])
    for url, res in zip(bad, results):
        message, _ = assert_cli_error(res, 2, "--url")
        assert "unreachable" not in message and "cannot reach" not in message, (url, message)
        assert "http://" in res.stderr, (url, res.stderr)
    assert not cli.config.exists()


def test_env_url_without_scheme_assumes_http(cli: Cli, lab: Lab) -> None:
    lab.create(name="vm1")
    host_port = lab.url.removeprefix("http://")
    res = cli("forward", "ls", "-o", "json", LABGATE_URL=host_port + "/", LABGATE_TOKEN=lab.tokens["alice"])
    assert [f["name"] for f in res.json()] == ["vm1"]  # stdout stays plain JSON
    assert res.stderr.startswith("note: LABGATE_URL") and f"using {lab.url}" in res.stderr, res.stderr
    message, hint = assert_cli_error(cli("forward", "ls", LABGATE_URL="gw.example.net", LABGATE_TOKEN="lg_x"), 2,
                                     "LABGATE_URL", "http:// or https://")
    assert "https://" in hint
