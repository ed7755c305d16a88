"""Redis restarted (empty) or down while the client is away: not recovered, no replica crashes,
events flow again, and recovery works again afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import StartGateway
from tests.e2e.recovery.support import (
    COMMON_ENV,
    EVENT,
    Deployment,
    _publisher,
    come_back,
    connect,
    go_away,
    numbers,
    payload,
    recovery_outcomes,
    settle,
    token,
    uid,
)
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients


@pytest.fixture
def restartable(redis_server: RedisServer, start_gateway: StartGateway) -> Iterator[Deployment]:
    """Two replicas on a Redis of this test's own, which the test may restart."""
    settings = {"KEY_PREFIX": "ngw", "CHANNEL_PREFIX": "socket.io"}
    env = {**COMMON_ENV, **settings, "REDIS_URL": redis_server.url}
    replicas = [start_gateway(env), start_gateway(env)]
    with _publisher(redis_server.url, settings) as pub:
        yield Deployment("redis", replicas, settings, redis_server, "ngw", pub)


def restart_redis(clients: NodeClients, dep: Deployment) -> None:
    """Restart Redis (empty: nothing is persisted) and wait until every replica is back on the
    bus: a client of each, connected throughout, gets an event published after the restart."""
    assert dep.redis is not None
    watcher = uid("w")
    for i, replica in enumerate(dep.replicas):
        connect(clients, f"{watcher}-{i}", replica.ns_url, token(watcher))
    dep.redis.restart()
    room, n, deadline = f"user:{watcher}", 0, time.monotonic() + 20
    while not all(clients.events(f"{watcher}-{i}", EVENT) for i in range(len(dep.replicas))):
        assert time.monotonic() < deadline, "the replicas did not come back on the bus"
        with contextlib.suppress(ConnectionError):
            dep.emit(room, payload(n, room))
        n += 1
        time.sleep(0.3)


def assert_no_crash(dep: Deployment) -> None:
    for replica in dep.replicas:
        assert replica.alive(), replica.log_tail()
        assert "Traceback" not in replica.log_text(), replica.log_tail(200)


def test_redis_restarted_while_away_is_not_recovered_then_events_flow(
    node_clients: NodeClients, restartable: Deployment, nowhere: str,
) -> None:
    dep = restartable
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)

    go_away(node_clients, "a", nowhere)
    dep.emit(room, payload(1, room))  # goes with the old Redis: cannot be replayed
    restart_redis(node_clients, dep)
    dep.emit(room, payload(2, room))

    back = come_back(node_clients, "a", dep.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is False
    assert back["sid"] != first["sid"]
    node_clients.assert_no_event("a", EVENT, within=0.3, allowed=1)
    dep.emit(room, payload(3, room))
    assert numbers(settle(node_clients, "a", 2)) == [0, 3]
    assert_no_crash(dep)


def test_back_while_redis_is_down_is_not_recovered_then_events_flow_when_it_returns(
    node_clients: NodeClients, restartable: Deployment, nowhere: str,
) -> None:
    """Nothing can be replayed while the bus is away: the client is not told it recovered, no
    replica crashes, and once Redis is back (empty) the new session gets events."""
    dep = restartable
    assert dep.redis is not None
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    dep.emit(room, payload(1, room))
    dep.redis.kill()
    back = come_back(node_clients, "a", dep.replica(1))
    if back["type"] == "connect":  # or refused while the bus is away: both are honest
        assert back["recovered"] is False
        assert back["sid"] != first["sid"]
    dep.redis.start()
    for replica in dep.replicas:
        replica.wait_ready(20)
    if back["type"] != "connect":  # refused: it tries again by itself once Redis is back
        back = node_clients.wait_connected("a", timeout=20)
        assert back["type"] == "connect", back
        assert back["recovered"] is False
    # Once the replica is back on the bus, what is published reaches the socket.
    n, deadline = 10, time.monotonic() + 20
    while not [e for e in node_clients.events("a", EVENT) if e.payload["n"] >= 10]:
        assert time.monotonic() < deadline, "no event reached the client after Redis came back"
        with contextlib.suppress(ConnectionError):
            dep.emit(room, payload(n, room))
        n += 1
        time.sleep(0.3)
    assert 1 not in numbers(node_clients.events("a", EVENT))
    assert_no_crash(dep)


def test_recovery_works_again_after_a_redis_restart(
    node_clients: NodeClients, restartable: Deployment, nowhere: str,
) -> None:
    dep = restartable
    restart_redis(node_clients, dep)
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    for n in range(4):  # blips, back to each replica in turn
        go_away(node_clients, "a", nowhere)
        dep.emit(room, payload(n, room))
        back = come_back(node_clients, "a", dep.replica(n + 1))
        assert back["type"] == "connect", back
        assert back["recovered"] is True, (
            f"blip {n} to replica {(n + 1) % 2}: outcomes {recovery_outcomes(dep.replica(n + 1))}")
        assert back["sid"] == first["sid"]
        assert numbers(settle(node_clients, "a", n + 1)) == list(range(n + 1))
    assert_no_crash(dep)
