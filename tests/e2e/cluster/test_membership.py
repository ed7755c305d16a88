"""Producers moving sockets through a Redis Cluster: join and leave (the room's position read on
the room's shard, the sessions edited and the replicas told on the user's shard, another
shard), disconnect_user, and presence (is_online, online_count) for users on every shard.
"""

from __future__ import annotations

from tests.e2e.cluster.conftest import StartDeployment
from tests.e2e.cluster.support import (
    EFFECTIVE,
    EVENT,
    Deployment,
    by_room,
    connect,
    one_per_shard,
    payload,
    rooms_of,
    shard_of,
    token,
    uid,
    wait_for,
    wait_settled,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients

QUIET = 0.5
# A replica writes its user count every 5 s; a killed or idle one counts for 15 s.
COUNT_FOLLOWS = 12.0


def test_join_and_leave_reach_both_replicas_when_the_room_lives_on_another_shard(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    [(user_port, (user, own)), (_, (bystander, _))] = list(users.items())[:2]
    others = [p for p in users if p != user_port]
    rooms = one_per_shard(cluster, lambda q: f"quiz:{q}", "q", ports=others)
    room = rooms[others[0]][1]
    assert shard_of(cluster, room) != shard_of(cluster, own)
    r0, r1 = deployment.replicas
    connect(node_clients, "a0", r0.ns_url, token(user))
    connect(node_clients, "a1", r1.ns_url, token(user), "polling")
    connect(node_clients, "b", r1.ns_url, token(bystander))

    at = deployment.publisher.join(user, room)
    assert set(at) == {room}
    deployment.emit(room, payload(1, room))  # right after the join returns: not lost
    for name in ("a0", "a1"):
        assert by_room(wait_settled(node_clients, name, 1)) == {room: [1]}, name
        assert room in rooms_of(node_clients, name)
    node_clients.assert_no_event("b", within=QUIET)
    assert room not in rooms_of(node_clients, "b")

    deployment.publisher.leave(user, room)
    for name in ("a0", "a1"):
        wait_for(lambda name=name: room not in rooms_of(node_clients, name), EFFECTIVE,
                 f"{name} left {room}", every=0.1)
        assert own in rooms_of(node_clients, name)
    deployment.emit(room, payload(2, room))
    deployment.emit(own, payload(3, own))
    for name in ("a0", "a1"):
        assert by_room(wait_settled(node_clients, name, 2)) == {room: [1], own: [3]}, name
    node_clients.assert_no_event("b", within=0.05)


def test_disconnect_user_drops_every_socket_on_both_replicas_and_nobody_else(
    node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment,
) -> None:
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    (user, own), *bystanders = users.values()
    r0, r1 = deployment.replicas
    connect(node_clients, "a0", r0.ns_url, token(user))
    connect(node_clients, "a1", r1.ns_url, token(user), "polling")
    for k, (other, _) in enumerate(bystanders):
        connect(node_clients, f"b{k}", deployment.replica(k).ns_url, token(other))
    pub = deployment.publisher
    assert pub is not None
    wait_for(lambda: pub.is_online(user), EFFECTIVE, f"{user} online")

    pub.disconnect_user(user)
    for name in ("a0", "a1"):
        dropped = node_clients.wait_disconnected(name, timeout=EFFECTIVE)
        assert dropped["reason"] == "io server disconnect", dropped
        assert dropped["retrying"] is False, dropped
    deployment.emit(own, payload(0, own))
    for k, (_, room) in enumerate(bystanders):
        deployment.emit(room, payload(k + 1, room))
        assert by_room(wait_settled(node_clients, f"b{k}", 1)) == {room: [k + 1]}
        assert node_clients.state(f"b{k}")["connected"] is True
    for name in ("a0", "a1"):
        node_clients.assert_no_event(name, within=0.1)
        assert node_clients.state(name)["connected"] is False
        assert [r["type"] for r in node_clients.log(name)].count("connect") == 1, "it came back"
    wait_for(lambda: not pub.is_online(user), EFFECTIVE, f"{user} offline after the kick")

    # kicked, not banned: a new connection is a new session that gets events
    connect(node_clients, "again", r1.ns_url, token(user))
    deployment.emit(own, payload(9, own))
    assert by_room(wait_settled(node_clients, "again", 1)) == {own: [9]}


def test_presence_of_users_on_every_shard_across_both_replicas(
    node_clients: NodeClients, cluster: RedisCluster, deploy: StartDeployment,
) -> None:
    """On prefixes of its own, so that online_count counts this test's users only."""
    prefix = uid("p")
    dep = deploy(cluster, name="presence", KEY_PREFIX=prefix, CHANNEL_PREFIX=f"{prefix}.io")
    pub = dep.publisher
    assert pub is not None
    r0, r1 = dep.replicas
    users = one_per_shard(cluster, lambda u: f"user:{u}")
    (u0, _), (u1, _), (u2, _) = users.values()
    assert pub.online_count() == 0
    assert not any(pub.is_online(u) for u in (u0, u1, u2))

    connect(node_clients, "u0", r0.ns_url, token(u0))
    connect(node_clients, "u0-again", r0.ns_url, token(u0), "polling")  # two sockets, one replica
    connect(node_clients, "u1", r1.ns_url, token(u1))
    connect(node_clients, "u2", r1.ns_url, token(u2), "polling")
    for user in (u0, u1, u2):
        wait_for(lambda user=user: pub.is_online(user), EFFECTIVE, f"{user} online")
    assert pub.is_online(uid()) is False
    wait_for(lambda: pub.online_count() == 3, COUNT_FOLLOWS,
             "online_count is 3 (a user with two sockets on one replica counts once)", every=0.2)

    node_clients.disconnect("u1")
    wait_for(lambda: not pub.is_online(u1), EFFECTIVE, "u1 offline once its only socket left")
    node_clients.disconnect("u0")  # one of u0's two sockets: still online
    wait_for(lambda: pub.online_count() == 2, COUNT_FOLLOWS, "online_count follows to 2", every=0.2)
    assert pub.is_online(u0) is True
    assert pub.is_online(u2) is True

    dep.emit(f"user:{u0}", payload(0, f"user:{u0}"))
    assert by_room(wait_settled(node_clients, "u0-again", 1)) == {f"user:{u0}": [0]}
    node_clients.assert_no_event("u2", EVENT, within=0.05)
