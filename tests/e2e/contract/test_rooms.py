"""Rooms and the ack: the rooms of each role, classrooms with duplicates or none, the
`subscribe:notifications` ack, each room getting only what is emitted to it, and no way for a
client to put itself in a room.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.contract.support import (
    BOTH,
    COINS,
    QUIET,
    SECRET,
    connect,
    emit_http,
    rooms_of,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients

ROLES: dict[str, tuple[dict[str, Any], Callable[[str, list[str]], list[str]]]] = {
    # name: (token claims, expected rooms from (user, classroom ids))
    "student": ({"role": "student"}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "default_role": ({"role": None}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "unknown_role": ({"role": "superuser"}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "teacher": ({"role": "teacher"},
                lambda u, c: [f"user:{u}", f"teacher:{u}", *(f"classroom:{x}" for x in c)]),
    "admin": ({"role": "admin"}, lambda u, c: [f"user:{u}", "admin:all", *(f"classroom:{x}" for x in c)]),
}


@BOTH
@pytest.mark.parametrize("role", list(ROLES))
def test_rooms_for_each_role(node_clients: NodeClients, gw: GatewayProcess, transport: str,
                             role: str) -> None:
    user = uid()
    number = secrets.randbelow(10**9)
    text = f"c-{uuid.uuid4().hex[:6]}"
    claims, expected = ROLES[role]
    tok = make_token(SECRET, user, classrooms=[number, text], **claims)
    record = connect(node_clients, "a", gw, tok, transport)
    rooms = rooms_of(node_clients, "a")
    assert sorted(rooms) == sorted(expected(user, [str(number), text]))
    assert record["sid"] not in rooms, "the socket's own id is not a room of the contract"


def test_rooms_without_classrooms_and_with_duplicates(node_clients: NodeClients,
                                                      gw: GatewayProcess) -> None:
    user, other = uid(), uid()
    connect(node_clients, "none", gw, make_token(SECRET, user, classrooms=None))
    assert rooms_of(node_clients, "none") == [f"user:{user}"]
    connect(node_clients, "dupes", gw, make_token(SECRET, other, classrooms=[7, "7", 7]))
    assert sorted(rooms_of(node_clients, "dupes")) == ["classroom:7", f"user:{other}"]


def test_subscribe_ack_with_and_without_payload(node_clients: NodeClients, gw: GatewayProcess) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user, classrooms=["k1"]))
    expected = {"ok": True, "rooms": [f"user:{user}", "classroom:k1"]}
    for args in ((), ({},), ({"since": "x"},), ("anything",)):
        ack = node_clients.emit("a", "subscribe:notifications", *args)
        assert ack["ok"] is True, (args, ack)
        assert sorted(ack["rooms"]) == sorted(expected["rooms"]), (args, ack)


def test_each_room_receives_only_what_is_emitted_to_it(node_clients: NodeClients,
                                                       gw: GatewayProcess) -> None:
    classroom = f"k{uuid.uuid4().hex[:8]}"
    student, teacher, admin, outsider = uid(), uid(), uid(), uid()
    connect(node_clients, "student", gw, token(student, classrooms=[classroom]))
    connect(node_clients, "teacher", gw, token(teacher, role="teacher", classrooms=[classroom]))
    connect(node_clients, "admin", gw, token(admin, role="admin"), "polling")
    connect(node_clients, "outsider", gw, token(outsider, classrooms=["elsewhere"]))

    def emit(target: dict[str, Any], n: int) -> None:
        status, body = emit_http(gw, {"event": "notification:read", **target,
                                      "data": {"notificationId": f"n{n}", "readAt": "2024-01-01T00:00:00Z"}})
        assert status == 200, body

    emit({"room": f"teacher:{teacher}"}, 1)
    emit({"room": "admin:all"}, 2)
    emit({"room": f"classroom:{classroom}"}, 3)
    emit({"user": student}, 4)
    emit({"all": True}, 5)
    expected = {"student": ["n3", "n4", "n5"], "teacher": ["n1", "n3", "n5"], "admin": ["n2", "n5"],
                "outsider": ["n5"]}
    for name, ids in expected.items():
        events = node_clients.wait_events(name, "notification:read", len(ids))
        assert [e.payload["notificationId"] for e in events] == ids, name
    for name, ids in expected.items():
        node_clients.assert_no_event(name, within=QUIET / 4, allowed=len(ids))


def test_a_client_cannot_put_itself_in_a_room(node_clients: NodeClients, gw: GatewayProcess) -> None:
    user, victim = uid(), uid()
    connect(node_clients, "a", gw, token(user))
    for event, payload in (("join", "admin:all"), ("joinRoom", {"room": f"user:{victim}"}),
                           ("subscribe", {"rooms": ["admin:all"]})):
        assert node_clients.emit("a", event, payload) == {"ok": False, "error": "unknown_event"}
    # asking subscribe:notifications for rooms does not grant them either
    node_clients.emit("a", "subscribe:notifications", {"rooms": ["admin:all", f"user:{victim}"]})
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    for target in ({"room": "admin:all"}, {"user": victim}, {"room": "classroom:lobby"}):
        status, _ = emit_http(gw, {"event": "coins:earned", **target, "data": COINS})
        assert status == 200
    node_clients.assert_no_event("a", within=QUIET)
