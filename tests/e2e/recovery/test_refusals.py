"""When a session must not be recovered: another user's pid, made-up pids, the right pid with a
forged offset, a token that expired while away, a user kicked before or while away.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.delivery.offsets import component
from tests.e2e.recovery.support import (
    BUSES,
    EVENT,
    FAST,
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


@pytest.mark.parametrize("bus", BUSES)
def test_another_users_pid_starts_a_fresh_session_and_replays_nothing(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str,
) -> None:
    dep = deployments.get(bus)
    alice, bob, c, cb = uid(), uid(), uid("c"), uid("c")
    a_rooms = [f"user:{alice}", f"classroom:{c}"]
    first = connect(node_clients, "alice", dep.replica(0).ns_url, token(alice, (c,)))
    alice_pid = node_clients.state("alice")["pid"]
    dep.emit(a_rooms[0], payload(0, a_rooms[0]))
    [seen] = node_clients.wait_events("alice", EVENT, 1)
    go_away(node_clients, "alice", nowhere)
    for n in range(1, 5):
        dep.emit(a_rooms[n % 2], payload(n, a_rooms[n % 2]))

    # Bob presents Alice's pid and offset (socket.io-client merges `auth` into its CONNECT).
    node_clients.connect("bob", dep.replica(1).ns_url, token=token(bob, (cb,)),
                         auth={"pid": alice_pid, "offset": seen.offset}, **FAST)
    bobs = node_clients.wait_connected("bob")
    assert bobs["type"] == "connect", bobs
    assert bobs["recovered"] is False
    assert bobs["sid"] != first["sid"]
    assert node_clients.state("bob")["pid"] not in (None, alice_pid)
    assert rooms_of(node_clients, "bob") == sorted([f"user:{bob}", f"classroom:{cb}"])
    node_clients.assert_no_event("bob", within=0.5)
    dep.emit(f"user:{bob}", payload(100, f"user:{bob}"))
    assert numbers(settle(node_clients, "bob", 1)) == [100]

    # Alice's own session is untouched by the attempt.
    back = come_back(node_clients, "alice", dep.replica(1))
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(1))}"
    assert back["sid"] == first["sid"]
    assert numbers(settle(node_clients, "alice", 5)) == [0, 1, 2, 3, 4]
    assert node_clients.events("bob", EVENT)[0].payload["n"] == 100
    node_clients.assert_no_event("bob", within=0.1, allowed=1)


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param({"pid": "A" * 22}, id="unknown-pid"),
        pytest.param({"pid": "x" * 10_000, "offset": "y" * 10_000}, id="oversized"),
        pytest.param({"pid": 12345, "offset": 7}, id="not-strings"),
        pytest.param({"pid": {"$ne": ""}, "offset": ["a"]}, id="objects"),
        pytest.param({"pid": "", "offset": ""}, id="empty"),
    ],
)
@pytest.mark.parametrize("bus", BUSES)
def test_made_up_pids_start_a_fresh_session(
    node_clients: NodeClients, deployments: Deployments, bus: str, auth: dict[str, Any],
) -> None:
    dep = deployments.get(bus)
    user = uid()
    node_clients.connect("a", dep.replica(0).ns_url, token=token(user), auth=auth, **FAST)
    record = node_clients.wait_connected("a")
    assert record["type"] == "connect", record
    assert record["recovered"] is False
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    dep.emit(f"user:{user}", payload(0, f"user:{user}"))
    assert numbers(settle(node_clients, "a", 1)) == [0]


@pytest.mark.parametrize("bus", BUSES)
def test_own_pid_with_a_forged_offset_is_not_recovered(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str,
) -> None:
    """An offset the bus never gave (bad syntax, a position the room's stream never had) cannot
    be replayed from."""
    dep = deployments.get(bus)
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    pid = node_clients.state("a")["pid"]
    offset = dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    dep.emit(room, payload(1, room))
    ms, _ = (int(part) for part in offset.split("-"))
    never = component(room, ms - 1, 7).decode()  # well formed, but no such entry in the stream
    for i, forged in enumerate(["garbage", never]):
        name = f"f{i}"
        node_clients.connect(name, dep.replica(0).ns_url, token=token(user),
                             auth={"pid": pid, "offset": forged}, **FAST)
        record = node_clients.wait_connected(name)
        assert record["type"] == "connect", record
        assert record["sid"] != first["sid"], f"offset {forged!r} was accepted"
        node_clients.assert_no_event(name, EVENT, within=0.3)


@pytest.mark.parametrize("bus", BUSES)
def test_expired_token_is_refused_on_reconnection(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str,
) -> None:
    dep = deployments.get(bus)
    user = uid()
    room = f"user:{user}"
    exp = int(time.time()) + 3
    connect(node_clients, "a", dep.replica(0).ns_url, token(user, exp_in=exp - time.time()))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    dep.emit(room, payload(1, room))
    time.sleep(max(0.0, exp + 1.2 - time.time()))  # the token expires while the client is away

    refused = come_back(node_clients, "a", dep.replica(1))
    assert refused["type"] == "connect_error", refused
    assert refused["message"] == "unauthorized"
    assert refused["data"] == {"code": "token_expired"}
    state = node_clients.state("a")
    assert state["connected"] is False
    assert state["recovered"] is False
    node_clients.assert_no_event("a", EVENT, within=0.3, allowed=1)


def test_kicked_user_cannot_recover_with_the_old_pid(
    node_clients: NodeClients, deployments: Deployments, nowhere: str,
) -> None:
    dep = deployments.get("redis")
    assert dep.publisher is not None
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    pid = node_clients.state("a")["pid"]
    dep.emit(room, payload(0, room))
    [seen] = node_clients.wait_events("a", EVENT, 1)

    dep.publisher.disconnect_user(user)
    kicked = node_clients.wait_disconnected("a")
    assert kicked["reason"] == "io server disconnect"
    assert kicked["retrying"] is False
    dep.emit(room, payload(1, room))

    node_clients.connect("again", dep.replica(1).ns_url, token=token(user),
                         auth={"pid": pid, "offset": seen.offset}, **FAST)
    record = node_clients.wait_connected("again")
    assert record["type"] == "connect", record
    assert record["sid"] != first["sid"]
    assert node_clients.state("again")["pid"] not in (None, pid)
    node_clients.assert_no_event("again", EVENT, within=0.5)


def test_kicked_while_away_is_not_recovered(
    node_clients: NodeClients, deployments: Deployments, nowhere: str,
) -> None:
    dep = deployments.get("redis")
    assert dep.publisher is not None
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    dep.emit(room, payload(1, room))
    dep.publisher.disconnect_user(user)
    dep.emit(room, payload(2, room))

    back = come_back(node_clients, "a", dep.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is False
    assert back["sid"] != first["sid"]
    node_clients.assert_no_event("a", EVENT, within=0.3, allowed=1)
