"""The counters and gauges move when the thing they count happens: connections and
subscriptions, event packets per recipient and latency, the bus's messages and deliveries,
refused events, rate limits, handshakes and their refusals, recoveries and replays,
disconnects by reason, `POST /api/emit` outcomes; and no label value ever holds a user id.
"""

from __future__ import annotations

import json
import secrets

from tests.e2e.operations.support import (
    EVENT,
    FAST,
    NOT_EXEMPT,
    RATE_LIMIT_DISCONNECT_AFTER,
    WAIT,
    Replica,
    assert_no_user_ids,
    connect,
    emit_http,
    engineio_handshake,
    payload,
    refused,
    scrape,
    settle,
    token,
    uid,
    wait_delta,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import make_token
from tests.support.sio_client import NodeClients


def test_connection_gauge_and_subscriptions_follow_sockets(node_clients: NodeClients,
                                                          replica: Replica, nowhere: str) -> None:
    gw = replica.gw
    alice, bob, room = uid(), uid(), uid("c")
    before = scrape(gw)
    base = before.value("ws_connections_active")
    subs = before.value("bus_subscriptions")
    connect(node_clients, "a1", gw.ns_url, token(alice, (room,)))
    connect(node_clients, "a2", gw.ns_url, token(alice, (room,)), "polling")
    connect(node_clients, "b", gw.ns_url, token(bob, (room,)))
    now = scrape(gw)
    assert now.value("ws_connections_active") == base + 3
    # user:alice, user:bob and the classroom: one channel each, however many sockets.
    assert now.value("bus_subscriptions") == subs + 3

    node_clients.disconnect("b")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base + 2, 5,
               "the gauge follows a disconnect")
    assert scrape(gw).value("bus_subscriptions") == subs + 2

    # A lost transport: down while away, up again once recovered.
    node_clients.set_uri("a1", nowhere)
    node_clients.close_transport("a1")
    node_clients.wait_disconnected("a1")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base + 1, 5,
               "the gauge follows a lost transport")
    node_clients.set_uri("a1", gw.url)
    back = node_clients.wait_connected("a1", timeout=WAIT)
    assert back["recovered"] is True, back
    assert scrape(gw).value("ws_connections_active") == base + 2

    for name in ("a1", "a2"):
        node_clients.disconnect(name)
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base, 5, "back to the start")
    assert scrape(gw).value("bus_subscriptions") == subs
    assert_no_user_ids(scrape(gw), [alice, bob])


def test_messages_latency_and_bus_counters_count_each_recipient(node_clients: NodeClients,
                                                                replica: Replica) -> None:
    gw, pub = replica.gw, replica.pub
    alice, bob, room = uid(), uid(), uid("c")
    connect(node_clients, "a1", gw.ns_url, token(alice, (room,)))
    connect(node_clients, "a2", gw.ns_url, token(alice, (room,)), "polling")
    connect(node_clients, "b", gw.ns_url, token(bob, (room,)))
    before = scrape(gw)

    pub.emit(EVENT, payload(0), room=f"user:{alice}").result()                      # 2 recipients
    pub.emit("achievement:unlocked", {"achievementId": "a", "name": "n", "description": "d",
                                      "icon": "i", "xpReward": 5}, room=f"classroom:{room}").result()  # 3
    pub.emit("custom:thing", {"x": 1}, room=f"user:{bob}").result()                 # 1, label "other"
    pub.emit(EVENT, payload(1), room=f"classroom:{uid('c')}").result()              # nobody here
    for name, count in (("a1", 2), ("a2", 2), ("b", 2)):
        node_clients.wait_events(name, None, count)

    sent = "ws_messages_sent_total"
    wait_delta(gw, before, sent, 2, event=EVENT)
    wait_delta(gw, before, sent, 3, event="achievement:unlocked")
    wait_delta(gw, before, sent, 1, event="other")
    wait_delta(gw, before, "ws_latency_seconds_count", 6)
    wait_delta(gw, before, "bus_deliveries_total", 6)
    # One bus message per publish to a room this replica listens to; none for the empty room.
    wait_delta(gw, before, "bus_messages_received_total", 3, kind="event")
    after = scrape(gw)
    assert after.value("ws_latency_seconds_sum") > before.value("ws_latency_seconds_sum")
    assert "custom:thing" not in after.label_values(), "event labels come from a fixed set"

    # A control message (a producer's join) is received once, whatever it does.
    received = sum(before.by_label("bus_messages_received_total", "kind").values())
    pub.join(bob, f"classroom:{uid('c')}")
    wait_until(lambda: sum(scrape(gw).by_label("bus_messages_received_total", "kind").values())
               == received + 4, 5, "the join message counted")
    assert_no_user_ids(scrape(gw), [alice, bob])


def test_refused_client_events_are_counted_by_kind(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    before = scrape(gw)
    assert node_clients.emit("a", "admin:delete_everything", {"x": 1}) == {"ok": False, "error": "unknown_event"}
    node_clients.emit("a", "hello", ack=False)
    node_clients.emit("a", "join", "classroom:1", ack=False)
    wait_delta(gw, before, "ws_errors_total", 3, kind="unknown_event")
    reply = node_clients.emit("a", "subscribe:notifications", {"a": 1}, {"b": 2})
    assert reply == {"ok": False, "error": "invalid_payload"}
    wait_delta(gw, before, "ws_errors_total", 1, kind="invalid_payload")
    # The connection is still fine.
    assert node_clients.emit("a", "subscribe:notifications")["ok"] is True
    assert_no_user_ids(scrape(gw), [user])


def test_a_flooding_client_is_rate_limited_then_disconnected(node_clients: NodeClients,
                                                            replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    before = scrape(gw)
    for i in range(80):  # far beyond the bucket's burst (40 by default)
        node_clients.emit("a", "subscribe:notifications", {"i": i}, ack=False)
    gone = node_clients.wait_disconnected("a", timeout=WAIT)
    assert gone["reason"] == "io server disconnect", gone
    wait_delta(gw, before, "ws_errors_total", RATE_LIMIT_DISCONNECT_AFTER, kind="rate_limited")
    wait_delta(gw, before, "ws_disconnects_total", 1, reason="rate_limited")
    assert_no_user_ids(scrape(gw), [user])


def test_handshake_outcomes_are_counted(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user, other = uid(), uid()
    before = scrape(gw)
    hs = "ws_handshakes_total"

    connect(node_clients, "ok1", gw.ns_url, token(user))
    connect(node_clients, "ok2", gw.ns_url, token(user), "polling")
    wait_delta(gw, before, hs, 2, outcome="ok")

    assert refused(node_clients, "missing", gw.ns_url, None)["data"] == {"code": "token_missing"}
    bad = make_token("another-secret-" + "x" * 32, other)
    assert refused(node_clients, "invalid", gw.ns_url, bad)["data"] == {"code": "token_invalid"}
    expired = token(other, exp_in=-60)
    assert refused(node_clients, "expired", gw.ns_url, expired)["data"] == {"code": "token_expired"}
    third = refused(node_clients, "third", gw.ns_url, token(user))  # MAX_CONNECTIONS_PER_USER = 2
    assert third["message"] == "too_many_connections", third
    for outcome in ("token_missing", "token_invalid", "token_expired", "too_many_connections"):
        wait_delta(gw, before, hs, 1, outcome=outcome)

    # The per-IP handshake rate, from an address it applies to (burst 5, 1/s).
    statuses = [engineio_handshake(gw, NOT_EXEMPT) for _ in range(10)]
    assert set(statuses) == {200, 429}, statuses
    wait_delta(gw, before, hs, statuses.count(429), outcome="ip_rate_limited")
    # The sessions it let through never sent a Socket.IO CONNECT: closed after HANDSHAKE_TIMEOUT.
    wait_delta(gw, before, "ws_errors_total", statuses.count(200), timeout=10, kind="handshake_timeout")

    wait_delta(gw, before, hs, 2, outcome="ok")  # nothing above counted as a success
    assert_no_user_ids(scrape(gw), [user, other])


def test_recoveries_and_replays_are_counted(node_clients: NodeClients, replica: Replica,
                                            nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    user, room = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{room}"]
    first = connect(node_clients, "a", gw.ns_url, token(user, (room,)))
    pub.emit(EVENT, payload(0), room=rooms[0]).result()
    node_clients.wait_events("a", EVENT, 1)
    before = scrape(gw)

    node_clients.set_uri("a", nowhere)
    node_clients.close_transport("a")
    node_clients.wait_disconnected("a")
    for n in range(1, 5):
        pub.emit(EVENT, payload(n, rooms[n % 2]), room=rooms[n % 2]).result()
    node_clients.set_uri("a", gw.url)
    back = node_clients.wait_connected("a", timeout=WAIT)
    assert back["recovered"] is True, back
    assert back["sid"] == first["sid"], back
    got = settle(node_clients, "a", 5)
    # v2 (docs/wire-protocol.md, "Recovery, exactly"): each room's replay is in that room's
    # order, once each; positions are per room, so there is no order across the two rooms.
    assert sorted(got) == [0, 1, 2, 3, 4], got
    per_room = {room: [e.payload["n"] for e in node_clients.events("a", EVENT)
                       if (e.payload["room"] or rooms[0]) == room] for room in rooms}
    assert per_room == {rooms[0]: [0, 2, 4], rooms[1]: [1, 3]}, got
    wait_delta(gw, before, "ws_recoveries_total", 1, outcome="recovered")
    wait_delta(gw, before, "ws_handshakes_total", 1, outcome="recovered")
    wait_delta(gw, before, "ws_replayed_messages_total", 4)
    wait_delta(gw, before, "ws_disconnects_total", 1, reason="transport close")

    # A pid the gateway never gave: a fresh session, and the failed attempt counted by outcome.
    other = uid()
    fresh = scrape(gw)
    node_clients.connect("b", gw.ns_url, token=token(other), auth={"pid": "A" * 22, "offset": "x"},
                         transports=["websocket"], **FAST)
    record = node_clients.wait_connected("b")
    assert record["type"] == "connect", record
    assert record["recovered"] is False, record
    after = scrape(gw)
    failed = {k: v - fresh.by_label("ws_recoveries_total", "outcome").get(k, 0)
              for k, v in after.by_label("ws_recoveries_total", "outcome").items()}
    assert failed.get("recovered", 0) == 0, failed
    assert sum(failed.values()) == 1, failed
    assert after.value("ws_handshakes_total", outcome="ok") - fresh.value("ws_handshakes_total", outcome="ok") == 1
    assert_no_user_ids(after, [user, other])


def test_replayed_events_are_counted_as_sent(node_clients: NodeClients, replica: Replica,
                                             nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    pub.emit(EVENT, payload(0), room=f"user:{user}").result()
    node_clients.wait_events("a", EVENT, 1)
    node_clients.set_uri("a", nowhere)
    node_clients.close_transport("a")
    node_clients.wait_disconnected("a")
    before = scrape(gw)
    for n in range(1, 4):
        pub.emit(EVENT, payload(n), room=f"user:{user}").result()
    node_clients.set_uri("a", gw.url)
    assert node_clients.wait_connected("a", timeout=WAIT)["recovered"] is True
    assert settle(node_clients, "a", 4) == [0, 1, 2, 3]
    # Three event packets were written to the client's socket.
    wait_delta(gw, before, "ws_messages_sent_total", 3, event=EVENT)


def test_disconnects_are_counted_by_reason(node_clients: NodeClients, replica: Replica,
                                           nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    users = [uid() for _ in range(4)]
    before = scrape(gw)
    connect(node_clients, "leaves", gw.ns_url, token(users[0]), "polling")
    connect(node_clients, "drops", gw.ns_url, token(users[1]))
    connect(node_clients, "kicked", gw.ns_url, token(users[2]))
    connect(node_clients, "expires", gw.ns_url, token(users[3], exp_in=2))

    node_clients.disconnect("leaves")
    node_clients.set_uri("drops", nowhere)
    node_clients.close_transport("drops")
    pub.disconnect_user(users[2])
    assert node_clients.wait_disconnected("kicked", timeout=WAIT)["reason"] == "io server disconnect"
    assert node_clients.wait_disconnected("expires", timeout=WAIT)["reason"] == "io server disconnect"
    node_clients.wait_disconnected("drops")
    reason = "ws_disconnects_total"
    wait_delta(gw, before, reason, 1, reason="client disconnect")
    wait_delta(gw, before, reason, 1, reason="transport close")
    wait_delta(gw, before, reason, 1, reason="kicked")
    wait_delta(gw, before, reason, 1, reason="token_expired")
    after = scrape(gw)
    moved = {k: v - before.by_label(reason, "reason").get(k, 0)
             for k, v in after.by_label(reason, "reason").items()}
    assert sum(moved.values()) == 4, moved
    assert_no_user_ids(after, users)


def test_http_emit_outcomes_are_counted(replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    before = scrape(gw)
    good = json.dumps({"event": EVENT, "user": user, "data": payload(0)}).encode()
    assert emit_http(gw, good) == 200
    assert emit_http(gw, good) == 200
    assert emit_http(gw, good, key="wrong-key") == 401
    assert emit_http(gw, good, key=None) == 401
    assert emit_http(gw, b"{not json") == 400
    assert emit_http(gw, json.dumps({"event": EVENT, "data": {}}).encode()) == 400
    assert emit_http(gw, json.dumps({"event": EVENT, "user": user, "data": "x" * 70_000}).encode()) == 413
    out = "http_emit_total"
    wait_delta(gw, before, out, 2, outcome="ok")
    wait_delta(gw, before, out, 2, outcome="unauthorized")
    wait_delta(gw, before, out, 1, outcome="invalid_json")
    wait_delta(gw, before, out, 1, outcome="invalid_request")
    wait_delta(gw, before, out, 1, outcome="payload_too_large")
    assert_no_user_ids(scrape(gw), [user])


def test_no_label_value_ever_holds_a_user_id(node_clients: NodeClients, replica: Replica,
                                             nowhere: str) -> None:
    """Everything that takes a user id through the gateway, with ids that would be easy to
    mistake for label values (numbers, the names of rooms), then every sample's labels."""
    gw, pub = replica.gw, replica.pub
    users = [str(90_000_000 + secrets.randbelow(9_000_000)), uid("teacher"), uid("admin")]
    connect(node_clients, "s", gw.ns_url, token(users[0], ("4711",)))
    connect(node_clients, "t", gw.ns_url, token(users[1], role="teacher"), "polling")
    connect(node_clients, "a", gw.ns_url, token(users[2], role="admin"))
    for user in users:
        assert emit_http(gw, json.dumps({"event": EVENT, "user": user, "data": payload(0)}).encode()) == 200
        pub.emit(EVENT, payload(1), room=f"user:{user}").result()
    for name in ("s", "t", "a"):
        node_clients.wait_events(name, None, 2)
    node_clients.emit("s", f"user:{users[0]}")  # an unknown event named after the user
    pub.join(users[0], f"classroom:{users[0]}")  # a control message naming the user
    node_clients.set_uri("t", nowhere)
    node_clients.close_transport("t")
    node_clients.wait_disconnected("t")
    node_clients.set_uri("t", gw.url)
    assert node_clients.wait_connected("t", timeout=WAIT)["recovered"] is True
    pub.disconnect_user(users[2])
    node_clients.wait_disconnected("a", timeout=WAIT)
    refused(node_clients, "late", gw.ns_url, token(users[0], exp_in=-5))
    assert_no_user_ids(scrape(gw), users)
