"""Recovery across replicas on a Redis Cluster: a client whose rooms live on three different
shards comes back (to the other replica, or the same one) and gets every event it missed, of
every room, once each, in publish order within each room, with `recovered: true` and the same
sid; a client that never received an event gets each room's events from where it entered the
room; a room joined by a producer while the client was away (sessions on the user's shard, the
room on another) is replayed from the join.
"""

from __future__ import annotations

import pytest

from tests.e2e.cluster.support import (
    BACK_TIMEOUT,
    EVENT,
    Deployment,
    by_room,
    come_back,
    connect,
    go_away,
    one_per_shard,
    payload,
    recovery_outcomes,
    rooms_of,
    shard_of,
    token,
    wait_settled,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients


def three_shard_rooms(cluster: RedisCluster) -> tuple[str, list[str], list[str]]:
    """A user, two classroom ids, and the three rooms, each room on a different primary."""
    [(user_port, (user, own))] = list(one_per_shard(cluster, lambda u: f"user:{u}").items())[:1]
    others = [p for p in cluster.primary_ports() if p != user_port]
    classrooms = one_per_shard(cluster, lambda c: f"classroom:{c}", "c", ports=others)
    ids = [classrooms[p][0] for p in others]
    rooms = [own, *(classrooms[p][1] for p in others)]
    assert len({shard_of(cluster, r) for r in rooms}) == 3
    return user, ids, rooms


@pytest.mark.parametrize(("transport", "target"), [("websocket", 1), ("polling", 1), ("websocket", 0)],
                         ids=["websocket-other-replica", "polling-other-replica", "websocket-same-replica"])
def test_missed_events_of_rooms_on_three_shards_are_replayed_once_in_order(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment, nowhere: str,
    transport: str, target: int,
) -> None:
    user, ids, rooms = three_shard_rooms(cluster)
    first = connect(node_clients, "a", deployment.replica(0).ns_url, token(user, tuple(ids)), transport)
    assert first["recovered"] is False
    assert rooms_of(node_clients, "a") == sorted(rooms)
    for n, room in enumerate(rooms):  # a position in each room
        deployment.emit(room, payload(n, room))
    wait_settled(node_clients, "a", 3)

    go_away(node_clients, "a", nowhere)
    missed = list(range(3, 15))
    for n in missed:  # the three rooms interleaved
        deployment.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    node_clients.assert_no_event("a", EVENT, within=0.2, allowed=3)

    back_to = deployment.replica(target)
    node_clients.set_uri("a", back_to.url)
    newer = list(range(15, 18))
    for n in newer:  # emitted while the client reconnects: after the missed ones of each room
        deployment.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"not recovered; outcomes: {recovery_outcomes(back_to)}"
    assert back["sid"] == first["sid"]

    events = wait_settled(node_clients, "a", 18)
    assert by_room(events) == {room: list(range(k, 18, 3)) for k, room in enumerate(rooms)}
    assert all(e.recovered for e in events[3:])
    assert rooms_of(node_clients, "a") == sorted(rooms)
    deployment.emit(rooms[2], payload(18, rooms[2]))  # and live events still come, once
    assert by_room(wait_settled(node_clients, "a", 19))[rooms[2]][-2:] == [17, 18]


def test_a_client_that_never_received_an_event_gets_each_rooms_events_since_it_entered(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment, nowhere: str,
) -> None:
    user, ids, rooms = three_shard_rooms(cluster)
    for n, room in enumerate(rooms):  # before the client: never its
        deployment.emit(room, payload(100 + n, room))
    first = connect(node_clients, "a", deployment.replica(1).ns_url, token(user, tuple(ids)))
    assert node_clients.state("a")["lastOffset"] is None
    go_away(node_clients, "a", nowhere)
    for n in range(6):
        deployment.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    back = come_back(node_clients, "a", deployment.replica(0))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(deployment.replica(0))}"
    assert back["sid"] == first["sid"]
    assert by_room(wait_settled(node_clients, "a", 6)) == {
        room: [k, k + 3] for k, room in enumerate(rooms)}


def test_a_room_joined_while_away_is_replayed_from_the_join(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment, nowhere: str,
) -> None:
    user, _, rooms = three_shard_rooms(cluster)
    own, room = rooms[0], rooms[1]  # the sessions on one shard, the joined room on another
    pub = deployment.publisher
    assert pub is not None
    first = connect(node_clients, "a", deployment.replica(0).ns_url, token(user))
    deployment.emit(own, payload(0, own))
    wait_settled(node_clients, "a", 1)
    go_away(node_clients, "a", nowhere)
    deployment.emit(room, payload(1, room))  # before the join: not the client's
    pub.join(user, room)
    deployment.emit(room, payload(2, room))
    deployment.emit(own, payload(3, own))
    back = come_back(node_clients, "a", deployment.replica(1))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(deployment.replica(1))}"
    assert back["sid"] == first["sid"]
    assert by_room(wait_settled(node_clients, "a", 3)) == {own: [0, 3], room: [2]}
    assert room in rooms_of(node_clients, "a")
