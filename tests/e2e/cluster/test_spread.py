"""Publishes spread over the primaries (INFO commandstats): each event is published by a script
call on the primary that owns its room's slot (one call may carry several events of that slot),
so every primary runs EVAL/EVALSHA and one SPUBLISH per event for the rooms it owns, replicas
run none, and the events still reach their sockets. From the Publisher (one
call at a time and emit_many, grouped by shard) and from /api/emit.
"""

from __future__ import annotations

from publisher.commands import Message
from tests.e2e.cluster.support import (
    EVENT,
    Deployment,
    by_room,
    connect,
    http_emit,
    one_per_shard,
    payload,
    token,
    wait_settled,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients

PER_ROOM = 20


def scripts_and_publishes(cluster: RedisCluster, ports: list[int]) -> dict[int, tuple[int, int]]:
    """Per node: (EVAL + EVALSHA calls, SPUBLISH calls) since the last reset."""
    out = {}
    for port in ports:
        stats = cluster.commandstats(port)
        out[port] = (stats.get("eval", 0) + stats.get("evalsha", 0), stats.get("spublish", 0))
    return out


def _rooms_and_sockets(node_clients: NodeClients, cluster: RedisCluster,
                       deployment: Deployment) -> dict[int, str]:
    """A user per primary, connected to replica 1; their rooms by primary."""
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    for port, (user, _) in users.items():
        connect(node_clients, str(port), deployment.replica(1).ns_url, token(user))
    return {port: room for port, (_, room) in users.items()}


def _assert_spread(cluster: RedisCluster, rooms: dict[int, str]) -> None:
    primaries = sorted(rooms)
    replicas = [p for p in cluster.running() if p not in primaries]
    assert sorted(cluster.primary_ports()) == primaries
    stats = scripts_and_publishes(cluster, primaries)
    for port in primaries:
        scripts, publishes = stats[port]
        assert scripts >= 1, f":{port} ran no script for its {PER_ROOM} events: {stats}"
        assert publishes >= PER_ROOM, f":{port} ran {publishes} SPUBLISH for {PER_ROOM} events: {stats}"
    on_replicas = scripts_and_publishes(cluster, replicas)
    assert all(scripts == 0 for scripts, _ in on_replicas.values()), on_replicas


def test_publisher_emits_spread_over_the_three_primaries(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    rooms = _rooms_and_sockets(node_clients, cluster, deployment)
    pub = deployment.publisher
    assert pub is not None
    cluster.reset_stats()
    half = PER_ROOM // 2
    for n in range(half):
        for room in rooms.values():
            pub.emit(EVENT, payload(n, room), room=room).result()
    pub.emit_many([Message(EVENT, payload(n, room), room=room)
                   for n in range(half, PER_ROOM) for room in rooms.values()])
    _assert_spread(cluster, rooms)
    for port, room in rooms.items():
        assert by_room(wait_settled(node_clients, str(port), PER_ROOM)) == {room: list(range(PER_ROOM))}


def test_api_emits_spread_over_the_three_primaries(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    rooms = _rooms_and_sockets(node_clients, cluster, deployment)
    cluster.reset_stats()
    for n in range(PER_ROOM):
        for room in rooms.values():
            http_emit(deployment.replica(0), {"event": EVENT, "room": room, "data": payload(n, room)})
    _assert_spread(cluster, rooms)
    for port, room in rooms.items():
        assert by_room(wait_settled(node_clients, str(port), PER_ROOM)) == {room: list(range(PER_ROOM))}
