"""GET /metrics by role (issue 11, item 4): the per-forward series (ids, owners, names, bytes of every user's
forwards) only for admin and metrics tokens; user and readonly tokens get the process-level metrics without them."""

from __future__ import annotations

from labgate.core.tokens import create_token
from tests.api.conftest import FORWARDS, Api, assert_error

PER_FORWARD = ("labgate_forward_connections", "labgate_forward_packets", "labgate_forward_bytes",
               "labgate_forward_last_used_timestamp_seconds")


def used(api: Api, fid: int, conns: int, nbytes: int) -> None:
    """Traffic through forward `fid` in the (in-memory) kernel, read into the database by the usage collector."""
    kernel = api.server.kernel()
    kernel.count("labgate_default_usage", "conns", fid, conns, 0)
    kernel.count("labgate_default_usage", "traffic", fid, 10, nbytes)
    api.server.labgate.usage.collect_once()


def test_a_user_token_cannot_see_other_users_forwards_in_metrics(api: Api) -> None:
    secret = api.create(api.bob, name="bobs-secret-box", target_port=80)
    mine = api.create(name="alices-box")
    used(api, secret["id"], 3, 123456)
    used(api, mine["id"], 1, 777)
    admin = api.admin.get("/metrics")
    assert admin.status_code == 200
    assert 'owner="bob"' in admin.text and 'name="bobs-secret-box"' in admin.text and "123456" in admin.text
    for client in (api.alice, api.server.client(create_token(api.server.labgate.db, "alice", role="readonly"))):
        resp = client.get("/metrics")
        assert resp.status_code == 200, resp.text
        text = resp.text
        assert "bobs-secret-box" not in text and 'owner="bob"' not in text
        # The byte count as a sample's value (a substring check failed by chance: process_virtual_memory_bytes
        # once read 1.599123456e+09).
        values = [line.rsplit(" ", 1)[-1] for line in text.splitlines() if line and not line.startswith("#")]
        assert not any(float(v) == 123456 for v in values), text
        assert not any(line.startswith(PER_FORWARD) for line in text.splitlines()), text
        # the process-level metrics are there
        assert 'labgate_targets_down{gateway="default"}' in text
        assert "labgate_last_sync_timestamp_seconds" in text


def test_a_metrics_token_reads_metrics_and_nothing_else(api: Api) -> None:
    fwd = api.create(api.bob, name="bobs-box")
    used(api, fwd["id"], 2, 4242)
    with api.server.client(create_token(api.server.labgate.db, "prometheus", role="metrics")) as scraper:
        resp = scraper.get("/metrics")
        assert resp.status_code == 200 and 'name="bobs-box"' in resp.text
        assert f'labgate_forward_bytes_total{{forward_id="{fwd["id"]}",gateway="default",name="bobs-box",' \
               f'owner="bob"}} 4242.0' in resp.text
        for path in (FORWARDS, f"{FORWARDS}/{fwd['id']}", "/api/v1/machines", "/api/v1/gateways",
                     "/api/v1/events", "/api/v1/tokens", "/api/v1/audit"):
            assert_error(scraper.get(path), 403, "forbidden")
        assert_error(scraper.post(FORWARDS, json={"target_address": "10.9.0.5", "target_port": 22}), 403,
                     "forbidden")
