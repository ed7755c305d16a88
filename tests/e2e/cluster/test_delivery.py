"""Delivery across replicas on a Redis Cluster: events for a user, a room and everyone reach the
sockets of both replicas and nobody else's, for rooms on each of the three shards, from the
Publisher (redis+cluster://) and from /api/emit.
"""

from __future__ import annotations

from tests.e2e.cluster.support import (
    EVENT,
    Deployment,
    by_room,
    connect,
    http_emit,
    one_per_shard,
    payload,
    token,
    uid,
    wait_settled,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients

QUIET = 0.5


def test_events_for_users_on_every_shard_reach_their_sockets_on_both_replicas(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    assert len(users) == 3
    for port, (user, _) in users.items():
        for i, replica in enumerate(deployment.replicas):
            connect(node_clients, f"{port}-{i}", replica.ns_url, token(user),
                    "polling" if i else "websocket")
    connect(node_clients, "bystander", deployment.replica(0).ns_url, token(uid()))

    for n, (_, room) in enumerate(users.values()):
        deployment.emit(room, payload(n, room))
    for n, (port, (_, room)) in enumerate(users.items()):
        for i in range(len(deployment.replicas)):
            got = wait_settled(node_clients, f"{port}-{i}", 1)
            assert by_room(got) == {room: [n]}, f"user on :{port}, replica {i}"
    node_clients.assert_no_event("bystander", within=QUIET)


def test_events_for_rooms_on_every_shard_reach_their_members_on_both_replicas(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    rooms = one_per_shard(cluster, lambda c: f"classroom:{c}", "c")
    ids = [ident for ident, _ in rooms.values()]
    names = [room for _, room in rooms.values()]
    # one member of each classroom on each replica, one member of all three, one outsider
    for k, ident in enumerate(ids):
        for i, replica in enumerate(deployment.replicas):
            connect(node_clients, f"m{k}-{i}", replica.ns_url, token(uid(), (ident,)))
    connect(node_clients, "all", deployment.replica(1).ns_url, token(uid(), tuple(ids)), "polling")
    connect(node_clients, "teacher", deployment.replica(0).ns_url,
            token(uid(), (ids[0],), role="teacher"))
    connect(node_clients, "outsider", deployment.replica(1).ns_url, token(uid(), (uid("c"),)))

    for n, room in enumerate(names):
        deployment.emit(room, payload(n, room))
        deployment.emit(room, payload(10 + n, room))
    for k, room in enumerate(names):
        for i in range(len(deployment.replicas)):
            assert by_room(wait_settled(node_clients, f"m{k}-{i}", 2)) == {room: [k, 10 + k]}
    assert by_room(wait_settled(node_clients, "all", 6)) == {
        room: [k, 10 + k] for k, room in enumerate(names)}
    assert by_room(wait_settled(node_clients, "teacher", 2)) == {names[0]: [0, 10]}
    node_clients.assert_no_event("outsider", within=QUIET)


def test_an_event_for_everyone_reaches_every_socket_of_both_replicas_once(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    names = []
    for port, (user, _) in users.items():
        for i, replica in enumerate(deployment.replicas):
            name = f"{port}-{i}"
            connect(node_clients, name, replica.ns_url, token(user, (uid("c"),)),
                    "websocket" if i else "polling")
            names.append(name)
    connect(node_clients, "admin", deployment.replica(1).ns_url, token(uid(), role="admin"))
    names.append("admin")
    deployment.emit(None, payload(0, "*"))
    deployment.emit(None, payload(1, "*"))
    for name in names:
        assert by_room(wait_settled(node_clients, name, 2)) == {"*": [0, 1]}, name


def test_api_emit_on_one_replica_reaches_sockets_on_the_other_for_every_shard(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    rooms = one_per_shard(cluster, lambda c: f"classroom:{c}", "c")
    r0, r1 = deployment.replicas
    for port, (user, _) in users.items():
        classroom, _ = rooms[port]
        connect(node_clients, str(port), r1.ns_url, token(user, (classroom,)))
    for n, (port, (user, room)) in enumerate(users.items()):
        answer = http_emit(r0, {"event": EVENT, "user": user, "data": payload(n, room)})
        assert answer["offset"], answer
        _, classroom_room = rooms[port]
        http_emit(r0, {"event": EVENT, "room": classroom_room, "data": payload(10 + n, classroom_room)})
    http_emit(r1, {"event": EVENT, "all": True, "data": payload(20, "*")})
    for n, (port, (_, room)) in enumerate(users.items()):
        _, classroom_room = rooms[port]
        got = by_room(wait_settled(node_clients, str(port), 3))
        assert got == {room: [n], classroom_room: [10 + n], "*": [20]}, port
