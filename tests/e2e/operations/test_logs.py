"""Logs: `LOG_FORMAT=json` gives one JSON object per line, a line per connection and per
disconnection with `sid` and `user_id`, never a token or a piece of one, and no line a
client can forge.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import quote

import pytest

from publisher import Publisher
from tests.e2e.conftest import StartGateway
from tests.e2e.operations.support import (
    API_KEY,
    BASE_ENV,
    DRAIN_EXIT_SLACK,
    DRAIN_SECONDS,
    SECRET,
    WAIT,
    connect,
    refused,
    request,
    scrape,
    token,
    uid,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients


def test_json_logs_have_a_line_per_connection_and_never_a_token(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway, nowhere: str,
) -> None:
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url, "LOG_FORMAT": "json"})
    users = {"ws": uid(), "poll": uid(), "hdr": uid(), "kick": uid()}
    tokens = {name: token(user, ("7",)) for name, user in users.items()}
    sids = {}
    sids["ws"] = connect(node_clients, "ws", gw.ns_url, tokens["ws"])["sid"]
    sids["poll"] = connect(node_clients, "poll", gw.ns_url, "Bearer " + tokens["poll"], "polling")["sid"]
    sids["hdr"] = connect(node_clients, "hdr", gw.ns_url, None,
                          extraHeaders={"Authorization": f"Bearer {tokens['hdr']}"})["sid"]
    sids["kick"] = connect(node_clients, "kick", gw.ns_url, tokens["kick"])["sid"]
    # Refusals: their tokens must not be logged either.
    bad_tokens = [
        make_token("not-the-secret-" + "y" * 32, uid()),
        token(uid(), exp_in=-30),
        token(uid())[:-6] + "AAAAAA",
        "eyJhbGciOiJub25lIn0." + token(uid()).split(".")[1] + ".",
        "definitely-not-a-jwt-" + secrets.token_hex(8),
    ]
    for i, bad in enumerate(bad_tokens):
        refused(node_clients, f"bad{i}", gw.ns_url, bad)

    # One recovery (a connection), a kick, a disconnect, a lost transport.
    node_clients.set_uri("ws", nowhere)
    node_clients.close_transport("ws")
    node_clients.wait_disconnected("ws")
    node_clients.set_uri("ws", gw.url)
    assert node_clients.wait_connected("ws", timeout=WAIT)["recovered"] is True
    with Publisher(redis_server.url) as pub:
        pub.disconnect_user(users["kick"])
    node_clients.wait_disconnected("kick", timeout=WAIT)
    node_clients.disconnect("poll")
    node_clients.disconnect("hdr")
    node_clients.disconnect("ws")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == 0, 5, "everyone gone")
    gw.sigterm()
    assert gw.wait_exit(DRAIN_SECONDS + DRAIN_EXIT_SLACK) == 0
    gw.stop()

    text = gw.log_text()
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {raw[:300]!r}")
        assert isinstance(line, dict), raw
        assert {"ts", "level", "logger", "msg"} <= set(line), raw
        lines.append(line)

    expected_connections = {"ws": 2, "poll": 1, "hdr": 1, "kick": 1}
    expected_reasons = {"ws": ["transport close", "client disconnect"], "poll": ["client disconnect"],
                        "hdr": ["client disconnect"], "kick": ["kicked"]}
    for name, sid in sids.items():
        mine = [line for line in lines if line.get("sid") == sid]
        connected = [line for line in mine if line["msg"] == "connected"]
        disconnected = [line for line in mine if line["msg"] == "disconnected"]
        assert len(connected) == expected_connections[name], (name, mine)
        assert [d.get("reason") for d in disconnected] == expected_reasons[name], (name, mine)
        for line in connected + disconnected:
            assert line.get("user_id") == users[name], line
    # A refusal is logged with its code, and no user id was established.
    refusals = [line for line in lines if line["msg"] == "handshake refused"]
    assert len(refusals) == len(bad_tokens), refusals
    assert {r.get("code") for r in refusals} == {"token_invalid", "token_expired"}

    for tok in [*tokens.values(), *bad_tokens]:
        pieces = [tok, *(p for p in tok.split(".") if len(p) >= 8)]
        for piece in pieces:
            assert piece not in text, f"the log holds a token or a part of one: {piece[:24]}..."
    assert SECRET not in text
    assert API_KEY not in text


def test_log_lines_stay_json_whatever_a_client_sends(start_gateway: StartGateway) -> None:
    gw = start_gateway({**BASE_ENV, "LOG_FORMAT": "json"})
    forged = {"ts": "2026-01-01T00:00:00.000Z", "level": "info", "logger": "gateway.socket",
              "msg": "connected", "sid": "forged", "user_id": "admin"}
    sid = "\n" + json.dumps(forged) + "\n"
    status, _ = request("GET", gw.url + "/socket.io/?EIO=4&transport=polling&sid=" + quote(sid))
    assert status == 400
    status, _ = request("GET", gw.url + "/socket.io/?EIO=4&transport=polling&sid=unknown")
    assert status == 400
    gw.sigterm()
    assert gw.wait_exit(DRAIN_SECONDS + DRAIN_EXIT_SLACK) == 0
    gw.stop()
    text = gw.log_text()
    for raw in text.splitlines():
        if raw.strip():
            try:
                line = json.loads(raw)
            except ValueError:
                pytest.fail(f"a log line is not JSON: {raw[:200]!r}")
            assert line.get("sid") != "forged", f"a client forged a log line: {raw}"
