"""Producers' `POST /api/emit` (docs/contract.md, "Producers"): the publish key, bad requests
refused with a message, oversized payloads, delivery to a user, a room and everyone, growing
offsets, and the endpoint off without a key.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    API_KEY,
    BASE_ENV,
    BOTH,
    COINS,
    QUIET,
    connect,
    emit_http,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients


@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer ", API_KEY],
                         ids=["none", "wrong-key", "basic-scheme", "empty-bearer", "no-scheme"])
def test_emit_requires_the_publish_key(node_clients: NodeClients, gw: GatewayProcess,
                                       auth: str | None) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user))
    body = {"event": "coins:earned", "user": user, "data": COINS}
    status, _ = emit_http(gw, body, key=None, auth=auth)
    assert status == 401
    node_clients.assert_no_event("a", within=QUIET)


BAD_EMITS: dict[str, tuple[Any, str | None]] = {
    # name: (body, a word the error message must contain, or None)
    "not_json": (b"{not json", None),
    "array": ([1, 2], None),
    "no_event": ({"user": "1", "data": {}}, "event"),
    "event_not_string": ({"event": 5, "user": "1", "data": {}}, "event"),
    "bad_event_name": ({"event": "bad name!", "user": "1", "data": {}}, None),
    "reserved_event": ({"event": "connect", "user": "1", "data": {}}, None),
    "long_event_name": ({"event": "e" * 65, "user": "1", "data": {}}, None),
    "no_data": ({"event": "coins:earned", "user": "1"}, "data"),
    "no_target": ({"event": "coins:earned", "data": COINS}, None),
    "two_targets": ({"event": "coins:earned", "user": "1", "room": "classroom:1", "data": COINS}, None),
    "room_too_long": ({"event": "coins:earned", "room": "quiz:" + "9" * 296, "data": COINS}, "300"),
    "room_no_id": ({"event": "coins:earned", "room": "user:", "data": COINS}, None),
    "room_bad_char": ({"event": "coins:earned", "room": "classroom:a\tb", "data": COINS}, None),
    "room_not_string": ({"event": "coins:earned", "room": ["user:1"], "data": COINS}, None),
    "admin_other": ({"event": "coins:earned", "room": "admin:x", "data": COINS}, None),
    "user_object": ({"event": "coins:earned", "user": {"id": 1}, "data": COINS}, None),
    "all_not_true": ({"event": "coins:earned", "all": "yes", "data": COINS}, None),
    "strict_not_boolean": ({"event": "coins:earned", "user": "1", "data": COINS, "strict": "yes"}, "strict"),
    # the schemas of the contract events are checked when the producer asks (`"strict": true`)
    "coins_amount_type": ({"event": "coins:earned", "user": "1", "strict": True,
                           "data": {**COINS, "amount": "fifty"}}, "amount"),
    "coins_missing_field": ({"event": "coins:earned", "user": "1", "strict": True,
                             "data": {"amount": 5, "reason": "x"}}, "newBalance"),
    "rank_bad_level": ({"event": "rank:promoted", "user": "1", "strict": True, "data": {
        "oldRank": {"name": "a", "level": "one"}, "newRank": {"name": "b", "level": 2},
        "xpRequired": 10}}, "level"),
}


@pytest.mark.parametrize("case", list(BAD_EMITS))
def test_emit_refuses_a_bad_request_with_a_message(gw: GatewayProcess, case: str) -> None:
    body, word = BAD_EMITS[case]
    raw = body if isinstance(body, bytes) else None
    status, answer = emit_http(gw, None if raw is not None else body, raw=raw)
    assert status == 400, answer
    assert isinstance(answer, dict), answer
    assert answer.get("ok") is False
    message = " ".join(str(answer.get(k, "")) for k in ("detail", "message", "error"))
    assert message.strip(), f"no message saying what is wrong: {answer}"
    if word is not None:
        assert word in message, f"the message does not name {word!r}: {answer}"


def test_emit_refuses_an_oversized_payload(gw: GatewayProcess) -> None:
    big = {"event": "custom:big", "user": "1", "data": {"blob": "x" * (70 * 1024)}}
    status, answer = emit_http(gw, big)
    assert status in (400, 413), answer


@BOTH
def test_emit_delivers_to_a_user_a_room_and_everyone(node_clients: NodeClients, gw: GatewayProcess,
                                                     transport: str) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = f"k{uuid.uuid4().hex[:8]}"
    connect(node_clients, "alice", gw, token(alice, classrooms=[room]), transport)
    connect(node_clients, "alice2", gw, token(alice), transport)  # a second tab
    connect(node_clients, "bob", gw, token(bob, classrooms=[room]), transport)
    connect(node_clients, "carol", gw, token(carol), transport)

    payload = {**COINS, "extra": {"nested": [1, "two"]}, "ünïcode": "✓"}
    status, answer = emit_http(gw, {"event": "coins:earned", "user": alice, "data": payload})
    assert status == 200, answer
    assert answer["ok"] is True
    assert isinstance(answer["offset"], str)
    assert answer["offset"]
    for name in ("alice", "alice2"):
        [event] = node_clients.wait_events(name, "coins:earned", 1)
        assert event.payload == payload, "extra keys pass through unchanged"
    for name in ("bob", "carol"):
        node_clients.assert_no_event(name, within=QUIET)

    achievement = {"achievementId": "a1", "name": "First", "description": "d", "icon": "i.png",
                   "xpReward": 10}
    status, answer = emit_http(gw, {"event": "achievement:unlocked", "room": f"classroom:{room}",
                                    "data": achievement})
    assert status == 200, answer
    for name in ("alice", "bob"):
        [event] = node_clients.wait_events(name, "achievement:unlocked", 1)
        assert event.payload == achievement
    for name in ("alice2", "carol"):
        node_clients.assert_no_event(name, "achievement:unlocked", within=QUIET)

    announcement = {"text": "maintenance at 22:00"}
    status, answer = emit_http(gw, {"event": "system:announcement", "all": True, "data": announcement})
    assert status == 200, answer
    for name in ("alice", "alice2", "bob", "carol"):
        [event] = node_clients.wait_events(name, "system:announcement", 1)
        assert event.payload == announcement
    for name, total in (("alice", 3), ("alice2", 2), ("bob", 2), ("carol", 1)):
        node_clients.assert_no_event(name, within=QUIET / 4, allowed=total)


def test_emit_offsets_grow(gw: GatewayProcess) -> None:
    """The answer's offset is the event's position in its room: it grows within the room."""
    user = uid()
    positions = []
    for n in range(3):
        status, answer = emit_http(gw, {"event": "coins:earned", "user": user, "data": {**COINS, "n": n}})
        assert status == 200
        ms, seq = (int(x) for x in answer["offset"].split("-"))
        positions.append((ms, seq))
    assert positions == sorted(set(positions))


def test_emit_endpoint_is_off_without_a_key(node_clients: NodeClients,
                                            start_gateway: StartGateway) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != "PUBLISH_API_KEY"}
    replica = start_gateway(env)
    user = uid()
    node_clients.connect("a", replica.ns_url, token=token(user), transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    for key in (None, "", API_KEY):
        status, _ = emit_http(replica, {"event": "coins:earned", "user": user, "data": COINS},
                              key=key, auth=None if key is not None else "")
        assert status in (403, 404, 405, 501), status
    node_clients.assert_no_event("a", within=QUIET)
