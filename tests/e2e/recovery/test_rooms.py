"""Rooms across a recovery: role rooms restored, two tabs of one user, rooms a producer joins or
leaves for the user while it is away, and events for everyone missed during a blip.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.recovery.support import (
    BUSES,
    EVENT,
    Deployments,
    come_back,
    connect,
    go_away,
    numbers,
    payload,
    recovery_outcomes,
    rooms_of,
    settle,
    token,
    uid,
)
from tests.support.sio_client import NodeClients


@pytest.mark.parametrize("role", ["teacher", "admin"])
@pytest.mark.parametrize("bus", BUSES)
def test_role_rooms_are_restored_with_their_events(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str, role: str,
) -> None:
    dep = deployments.get(bus)
    user, c = uid(), uid("c")
    role_room = f"teacher:{user}" if role == "teacher" else "admin:all"
    rooms = [f"user:{user}", f"classroom:{c}", role_room]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user, (c,), role=role))
    before = rooms_of(node_clients, "a")
    assert set(rooms) <= set(before), before
    go_away(node_clients, "a", nowhere)
    for n in range(6):
        dep.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    back = come_back(node_clients, "a", dep.replica(1))
    assert (back["recovered"], back["sid"]) == (True, first["sid"]), back
    got = numbers(settle(node_clients, "a", 6))
    assert got == list(range(6))
    assert rooms_of(node_clients, "a") == before


@pytest.mark.parametrize("bus", BUSES)
def test_two_tabs_of_one_user_each_recover_their_own_session(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str,
) -> None:
    dep = deployments.get(bus)
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    tok = token(user, (c,))
    t1 = connect(node_clients, "t1", dep.replica(0).ns_url, tok)
    t2 = connect(node_clients, "t2", dep.replica(0).ns_url, tok)
    assert t1["sid"] != t2["sid"]
    pids = {node_clients.state(t)["pid"] for t in ("t1", "t2")}
    assert len(pids) == 2

    # One tab drops; the other keeps getting events live.
    go_away(node_clients, "t1", nowhere)
    dep.emit(rooms[0], payload(0, rooms[0]))
    dep.emit(rooms[1], payload(1, rooms[1]))
    node_clients.wait_events("t2", EVENT, 2)
    back = come_back(node_clients, "t1", dep.replica(1))
    assert (back["recovered"], back["sid"]) == (True, t1["sid"]), back

    # Both drop, and come back to different replicas.
    go_away(node_clients, "t1", nowhere)
    go_away(node_clients, "t2", nowhere)
    for n in range(2, 6):
        dep.emit(rooms[n % 2], payload(n, rooms[n % 2]))
    back1 = come_back(node_clients, "t1", dep.replica(2))
    back2 = come_back(node_clients, "t2", dep.replica(1))
    assert (back1["recovered"], back1["sid"]) == (True, t1["sid"]), back1
    assert (back2["recovered"], back2["sid"]) == (True, t2["sid"]), back2
    assert {node_clients.state(t)["pid"] for t in ("t1", "t2")} == pids

    dep.emit(rooms[1], payload(6, rooms[1]))
    for tab in ("t1", "t2"):
        assert numbers(settle(node_clients, tab, 7)) == list(range(7)), tab
        assert rooms_of(node_clients, tab) == sorted(rooms)


def _wait_rooms(clients: NodeClients, name: str, expected: list[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := rooms_of(clients, name)) != sorted(expected):
        assert time.monotonic() < deadline, f"rooms {got}, expected {sorted(expected)}"
        time.sleep(0.05)


@pytest.mark.parametrize("received_before", [
    pytest.param(True, id="had-events"),
    pytest.param(False, id="no-event-yet"),
])
def test_room_joined_by_a_producer_is_kept_on_recovery(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, received_before: bool,
) -> None:
    dep = deployments.get("redis")
    assert dep.publisher is not None
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    expected: list[int] = []
    if received_before:
        dep.emit(rooms[0], payload(0, rooms[0]))
        node_clients.wait_events("a", EVENT, 1)
        expected.append(0)
    dep.publisher.join(user, rooms[1])
    _wait_rooms(node_clients, "a", rooms)

    go_away(node_clients, "a", nowhere)
    dep.emit(rooms[1], payload(1, rooms[1]))
    dep.emit(rooms[0], payload(2, rooms[0]))
    back = come_back(node_clients, "a", dep.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(1))}"
    assert back["sid"] == first["sid"]
    assert numbers(settle(node_clients, "a", len(expected) + 2)) == [*expected, 1, 2]
    assert rooms_of(node_clients, "a") == sorted(rooms)


def test_room_joined_while_away_comes_back_with_its_events_after_the_join(
    node_clients: NodeClients, deployments: Deployments, nowhere: str,
) -> None:
    dep = deployments.get("redis")
    assert dep.publisher is not None
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(rooms[0], payload(0, rooms[0]))
    node_clients.wait_events("a", EVENT, 1)

    go_away(node_clients, "a", nowhere)
    dep.emit(rooms[1], payload(1, rooms[1]))  # before the join: not for this user
    dep.publisher.join(user, rooms[1])
    dep.emit(rooms[1], payload(2, rooms[1]))
    dep.emit(rooms[0], payload(3, rooms[0]))
    back = come_back(node_clients, "a", dep.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(1))}"
    assert back["sid"] == first["sid"]
    assert rooms_of(node_clients, "a") == sorted(rooms)
    assert numbers(settle(node_clients, "a", 3)) == [0, 2, 3]


def test_room_left_while_away_keeps_what_was_emitted_to_it_before_the_leave(
    node_clients: NodeClients, deployments: Deployments, nowhere: str,
) -> None:
    dep = deployments.get("redis")
    assert dep.publisher is not None
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user, (c,)))
    dep.emit(rooms[0], payload(0, rooms[0]))
    node_clients.wait_events("a", EVENT, 1)

    go_away(node_clients, "a", nowhere)
    dep.emit(rooms[1], payload(1, rooms[1]))  # still a member: it missed this one
    dep.publisher.leave(user, rooms[1])
    dep.emit(rooms[1], payload(2, rooms[1]))  # no longer a member
    dep.emit(rooms[0], payload(3, rooms[0]))
    back = come_back(node_clients, "a", dep.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(1))}"
    assert back["sid"] == first["sid"]
    assert rooms_of(node_clients, "a") == [rooms[0]]
    assert numbers(settle(node_clients, "a", 3)) == [0, 1, 3]


@pytest.mark.parametrize("bus", BUSES)
def test_events_for_everyone_sent_while_away_are_replayed(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str,
) -> None:
    """As Node's adapter does: a broadcast missed during a blip is replayed with the rest."""
    dep = deployments.get(bus)
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    dep.emit(None, payload(1, "everyone"))
    dep.emit(room, payload(2, room))
    back = come_back(node_clients, "a", dep.replica(1))
    assert back["recovered"] is True
    assert back["sid"] == first["sid"]
    dep.emit(None, payload(3, "everyone"))
    assert numbers(settle(node_clients, "a", 4)) == [0, 1, 2, 3]
