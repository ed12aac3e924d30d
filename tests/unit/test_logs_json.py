"""Structured logs ([server] log_format = "json", `serve --log-format json`): one JSON object per line, the
message's key=value pairs as fields of their own, nothing lost from the message."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labgate.logs import JsonFormatter, parse_fields, setup_logging
from tests.harness import free_port


def test_fields_are_parsed_as_labgate_writes_them() -> None:
    fields = parse_fields("event=sync_failed gateway=lab kind=full error=\"applying change: Error: 'x' refused\" "
                          "forwards=12 seconds=0.250 names=['a', 'b'] exc=KernelError('boom') ok=True none=None")
    assert fields == {"event": "sync_failed", "gateway": "lab", "kind": "full",
                      "error": "applying change: Error: 'x' refused", "forwards": 12, "seconds": 0.25,
                      "names": ["a", "b"], "exc": "KernelError('boom')", "ok": True, "none": None}


def test_what_is_not_a_pair_stays_in_the_message_only() -> None:
    assert parse_fields("created 10.0.0.1/22 -> 10.9.0.5:22 (tcp)") == {}
    assert parse_fields("event=x event=y") == {"event": "x"}  # the first value of a key given twice
    assert parse_fields("error='unclosed") == {"error": "'unclosed"}  # kept as text, never raises


def record(msg: str, *args, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("labgate.test", logging.WARNING, __file__, 1, msg, args, info)


def test_a_record_is_one_json_line_with_reserved_keys_kept_apart() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        line = JsonFormatter().format(record("event=probe gateway=%s message=%r level=9", "lab", "hi\nthere",
                                             exc=exc))
    assert "\n" not in line  # one line, whatever the message and the traceback hold
    data = json.loads(line)
    assert data["level"] == "warning" and data["logger"] == "labgate.test" and data["time"].endswith("Z")
    assert data["message"] == "event=probe gateway=lab message='hi\\nthere' level=9"
    assert data["event"] == "probe" and data["gateway"] == "lab"
    assert data["message_"] == "hi\nthere" and data["level_"] == 9  # the message's own keys, renamed
    assert "ValueError: bad" in data["exception"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of text, json"):
        setup_logging("info", "xml")


def test_serve_writes_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "labgate.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\ndatabase = "sqlite:///{tmp_path}/lg.db"\n'
                      f'data_dir = "{tmp_path}/data"\n')
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--no-agent", "--log-format", "json",
                                 "--config", str(config)], stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "Uvicorn running" not in log.read_text() and "Application startup complete" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, log.read_text()
    parsed = [json.loads(line) for line in lines]  # every such line is a whole JSON object
    assert any(p.get("event") == "singleton_taken" for p in parsed), parsed
    assert any(p["logger"].startswith("uvicorn") for p in parsed), parsed  # uvicorn's own lines too
