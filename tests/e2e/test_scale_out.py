"""Issue 3, scale-out: three gateway replicas as real processes on one redis-server, the real
socket.io-client, and the publisher library (Python API and command line) as producers.

CONTRACT.md, "Producers": an event reaches every replica's matching sockets and nobody else's;
join, leave, disconnect and presence work across replicas, effective within a second; and a
replica receives only what concerns it (an event for one user reaches exactly one replica).

The three replicas and the Redis are shared by the module (each test uses its own user and
room ids). The presence test runs its own replicas on their own key and channel prefixes, so
that it can count users exactly and kill a replica with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from publisher import AsyncPublisher, Publisher
from tests.support.checks import scrape, wait_until
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}
BOTH = pytest.mark.parametrize("transport", list(TRANSPORTS))
COINS = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}
READ_AT = "2024-05-01T12:00:00Z"
QUIET = 0.5  # how long a socket that must receive nothing is watched, after the others got theirs
EFFECTIVE = 2.0  # "effective within a second", with room for a slow CI machine
ENV = {
    "JWT_SECRET": SECRET,
    "PUBLISH_API_KEY": API_KEY,
    "DRAIN_SECONDS": "0",
    "HANDSHAKE_RATE_PER_IP": "10000",
}
# Presence: a replica heartbeats every 5 s and counts as alive for 15 s.
PRESENCE_GONE = 25.0
COUNTED = 8.0  # online_count follows the replicas' heartbeats (every 5 s)


# -- helpers ---------------------------------------------------------------------------------


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def kid() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def token(user: str, **claims: Any) -> str:
    return make_token(SECRET, user, **claims)




def events_received(gw: GatewayProcess) -> float:
    """bus_messages_received_total{kind="event"} of one replica."""
    return scrape(gw).get(("bus_messages_received_total", (("kind", "event"),)), 0.0)


def connect(clients: NodeClients, name: str, gw: GatewayProcess, tok: str,
            transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    clients.connect(name, gw.ns_url, token=tok, transports=TRANSPORTS[transport], **opts)
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record
    return record


def rooms_of(clients: NodeClients, name: str) -> set[str]:
    ack = clients.emit(name, "subscribe:notifications")
    assert ack["ok"] is True, ack
    return set(ack["rooms"])


def http_emit(gw: GatewayProcess, body: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        gw.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def channel_of(room: str) -> str:
    """The room's sharded channel (docs/wire-protocol.md, "Names": the room is a hash tag)."""
    return f"socket.io#/notifications#{{{room}}}#"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def shardnumsub(redis: RedisServer, channel: str) -> int:
    """Subscribers of a sharded channel: SSUBSCRIBE is not counted by PUBSUB NUMSUB."""
    client = redis.client()
    try:
        [(_, count)] = client.pubsub_shardnumsub(channel)
        [(_, plain)] = client.pubsub_numsub(channel)
    finally:
        client.close()
    assert int(plain) == 0, "a replica listens to a room with plain SUBSCRIBE"
    return int(count)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(shared_redis: RedisServer) -> Iterator[GatewayCluster]:
    with GatewayCluster(3, shared_redis.url, ENV) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher


@pytest.fixture(autouse=True)
def replica_logs(cluster: GatewayCluster) -> Iterator[None]:
    """The replicas' log lines of the test, shown when it fails."""
    seen = [len(r.log_text()) for r in cluster]
    yield
    for replica, start in zip(cluster, seen, strict=True):
        print(f"-- {replica.name} log during the test:\n{replica.log_text()[start:][-8000:]}")


# -- delivery across replicas ----------------------------------------------------------------


@BOTH
def test_event_for_a_user_reaches_their_sockets_on_every_replica(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher, transport: str,
) -> None:
    user, other = uid(), uid()
    for i, replica in enumerate(cluster):
        connect(node_clients, f"user{i}", replica, token(user), transport)
        connect(node_clients, f"other{i}", replica, token(other), transport)
    offset = pub.emit("coins:earned", COINS, user=user).result()
    assert offset
    for i in range(len(cluster)):
        [event] = node_clients.wait_events(f"user{i}", "coins:earned", 1)
        assert event.payload == COINS
    for i in range(len(cluster)):
        node_clients.assert_no_event(f"other{i}", within=QUIET if i == 0 else 0.05)
        node_clients.assert_no_event(f"user{i}", within=0.05, allowed=1)


def test_event_for_a_room_reaches_its_members_on_every_replica(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    r0, r1, r2 = cluster
    room, elsewhere = kid(), kid()
    teacher, admin = uid(), uid()
    connect(node_clients, "member0", r0, token(uid(), classrooms=[room]))
    connect(node_clients, "member2", r2, token(uid(), classrooms=[room, elsewhere]), "polling")
    connect(node_clients, "teacher1", r1, token(teacher, role="teacher", classrooms=[room]))
    connect(node_clients, "outsider0", r0, token(uid(), classrooms=[elsewhere]))
    connect(node_clients, "outsider1", r1, token(uid()))
    connect(node_clients, "admin2", r2, token(admin, role="admin"))

    pub.emit("notification:read", {"notificationId": "n1", "readAt": READ_AT}, room=f"classroom:{room}").result()
    pub.emit("notification:read", {"notificationId": "n2", "readAt": READ_AT}, room=f"teacher:{teacher}").result()
    pub.emit("notification:read", {"notificationId": "n3", "readAt": READ_AT}, room="admin:all").result()
    pub.emit("notification:read", {"notificationId": "n4", "readAt": READ_AT}, room=f"classroom:{elsewhere}").result()
    expected = {"member0": ["n1"], "member2": ["n1", "n4"], "teacher1": ["n1", "n2"],
                "outsider0": ["n4"], "outsider1": [], "admin2": ["n3"]}
    for name, ids in expected.items():
        if ids:
            got = node_clients.wait_events(name, "notification:read", len(ids))
            assert [e.payload["notificationId"] for e in got] == ids, name
    for name, ids in expected.items():
        node_clients.assert_no_event(name, within=QUIET / 3, allowed=len(ids))


def test_broadcast_reaches_everyone_on_every_replica(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    names = []
    for i, replica in enumerate(cluster):
        for transport in TRANSPORTS:
            name = f"{transport}{i}"
            connect(node_clients, name, replica, token(uid(), role="teacher"), transport)
            names.append(name)
    pub.emit("system:maintenance", {"at": "22:00"}, broadcast=True).result()
    for name in names:
        [event] = node_clients.wait_events(name, "system:maintenance", 1)
        assert event.payload == {"at": "22:00"}
    for name in names:
        node_clients.assert_no_event(name, within=QUIET / 3, allowed=1)


def test_http_emit_on_one_replica_reaches_sockets_on_the_others(
    node_clients: NodeClients, cluster: GatewayCluster,
) -> None:
    r0, r1, r2 = cluster
    user, room = uid(), kid()
    connect(node_clients, "user2", r2, token(user))
    connect(node_clients, "member1", r1, token(uid(), classrooms=[room]))
    connect(node_clients, "other0", r0, token(uid()))
    answer = http_emit(r0, {"event": "coins:earned", "user": user, "data": COINS})
    assert answer["ok"] is True
    assert answer["offset"]
    http_emit(r0, {"event": "coins:earned", "room": f"classroom:{room}", "data": {**COINS, "amount": 7}})
    http_emit(r1, {"event": "system:hello", "all": True, "data": {"hi": 1}})
    assert node_clients.wait_events("user2", "coins:earned", 1)[0].payload == COINS
    assert node_clients.wait_events("member1", "coins:earned", 1)[0].payload["amount"] == 7
    for name in ("user2", "member1", "other0"):
        assert node_clients.wait_events(name, "system:hello", 1)[0].payload == {"hi": 1}
    node_clients.assert_no_event("other0", "coins:earned", within=QUIET)
    node_clients.assert_no_event("user2", "coins:earned", within=0.05, allowed=1)


def test_typed_helpers_reach_the_client_in_camel_case(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    user = uid()
    connect(node_clients, "a", cluster[2], token(user))
    pub.coins_earned(user, amount=5, reason="quiz", new_balance=105).result()
    pub.achievement_unlocked(user, achievement_id="first-quiz", name="First quiz",
                             description="Finished a quiz", icon="quiz.png", xp_reward=20).result()
    pub.rank_promoted(user, old_rank={"name": "Bronze", "level": 1},
                      new_rank={"name": "Silver", "level": 2}, xp_required=500).result()
    pub.notification_new(user, id="n-1", type="info", title="Hello", message="Welcome",
                         created_at="2024-05-01T12:00:00.000Z", data={"link": "/x"}).result()
    pub.notification_read(user, notification_id="n-1", read_at=READ_AT).result()
    events = node_clients.wait_events("a", None, 5)
    assert [(e.event, e.payload) for e in events] == [
        ("coins:earned", {"amount": 5, "reason": "quiz", "newBalance": 105}),
        ("achievement:unlocked", {"achievementId": "first-quiz", "name": "First quiz",
                                  "description": "Finished a quiz", "icon": "quiz.png",
                                  "xpReward": 20}),
        ("rank:promoted", {"oldRank": {"name": "Bronze", "level": 1},
                           "newRank": {"name": "Silver", "level": 2}, "xpRequired": 500}),
        ("notification:new", {"id": "n-1", "userId": user, "type": "info", "title": "Hello",
                              "message": "Welcome", "data": {"link": "/x"}, "read": False,
                              "createdAt": "2024-05-01T12:00:00.000Z"}),
        ("notification:read", {"notificationId": "n-1", "readAt": READ_AT}),
    ]
    with pytest.raises(ValueError, match="newBalance"):
        pub.coins_earned(user, amount=5, reason="quiz", new_balance="105").result()  # type: ignore[arg-type]
    node_clients.assert_no_event("a", within=QUIET, allowed=5)


@pytest.mark.parametrize("payload", [[1, "two", {"three": 3}], "text", 42, 2.5, True, None,
                                     {"deep": {"er": [{"est": None}]}}],
                         ids=["list", "string", "int", "float", "bool", "null", "nested"])
def test_emit_takes_any_json_payload(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher, payload: Any,
) -> None:
    user = uid()
    connect(node_clients, "a", cluster[0], token(user))
    pub.emit("custom:thing", payload, user=user).result()
    [event] = node_clients.wait_events("a", "custom:thing", 1)
    assert event.payload == payload
    assert len(event.data_args) == 1


# -- producers moving sockets: join, leave, disconnect ---------------------------------------


def test_join_and_leave_reach_every_socket_of_the_user(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    r0, r1, r2 = cluster
    user, bystander = uid(), uid()
    room = f"classroom:{kid()}"
    connect(node_clients, "a0", r0, token(user))
    connect(node_clients, "a1", r1, token(user), "polling")
    connect(node_clients, "b2", r2, token(bystander))

    pub.join(user, room)
    pub.emit("coins:earned", {**COINS, "n": 1}, room=room).result()  # right after the join: not lost
    for name in ("a0", "a1"):
        [event] = node_clients.wait_events(name, "coins:earned", 1, timeout=EFFECTIVE)
        assert event.payload["n"] == 1
        assert room in rooms_of(node_clients, name)
    node_clients.assert_no_event("b2", within=QUIET)
    assert room not in rooms_of(node_clients, "b2")

    pub.leave(user, room)
    for name in ("a0", "a1"):
        wait_until(lambda name=name: room not in rooms_of(node_clients, name), EFFECTIVE,
                   f"{name} left {room}", every=0.1)
    assert f"user:{user}" in rooms_of(node_clients, "a0")
    pub.emit("coins:earned", {**COINS, "n": 2}, room=room).result()
    pub.emit("coins:earned", {**COINS, "n": 3}, user=user).result()  # still in its own room
    for name in ("a0", "a1"):
        events = node_clients.wait_events(name, "coins:earned", 2)
        assert [e.payload["n"] for e in events] == [1, 3]
        node_clients.assert_no_event(name, within=QUIET / 2, allowed=2)


def test_join_is_bounded_by_the_room_policy(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    r0, r1, _ = cluster
    user, other = uid(), uid()
    allowed = f"classroom:{kid()}"
    connect(node_clients, "a", r0, token(user))
    connect(node_clients, "other", r1, token(other))
    with pytest.raises(ValueError):
        pub.join(user, f"user:{other}")
    with pytest.raises(ValueError):
        pub.join(user, f"teacher:{other}")
    with pytest.raises(ValueError):
        pub.leave(user, f"user:{user}")
    # a student is never put in admin:all nor in a teacher room, even by a producer
    pub.join(user, ["admin:all", f"teacher:{user}", allowed])
    wait_until(lambda: allowed in rooms_of(node_clients, "a"), EFFECTIVE, f"joined {allowed}", every=0.1)
    assert rooms_of(node_clients, "a") == {f"user:{user}", allowed}
    pub.emit("coins:earned", COINS, room="admin:all").result()
    pub.emit("coins:earned", COINS, room=f"teacher:{user}").result()
    node_clients.assert_no_event("a", within=QUIET)
    # a join for one user moves nobody else
    assert rooms_of(node_clients, "other") == {f"user:{other}"}


def test_disconnect_user_drops_every_socket_on_every_replica(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher,
) -> None:
    r0, r1, r2 = cluster
    user, bystander = uid(), uid()
    connect(node_clients, "a0", r0, token(user))
    connect(node_clients, "a2", r2, token(user), "polling")
    connect(node_clients, "b0", r0, token(bystander))
    connect(node_clients, "b1", r1, token(bystander))
    wait_until(lambda: pub.is_online(user), EFFECTIVE, f"{user} online")

    pub.disconnect_user(user)
    for name in ("a0", "a2"):
        dropped = node_clients.wait_disconnected(name, timeout=EFFECTIVE)
        assert dropped["reason"] == "io server disconnect", dropped
        assert dropped["retrying"] is False
    pub.emit("coins:earned", COINS, user=bystander).result()
    pub.emit("coins:earned", COINS, user=user).result()
    for name in ("b0", "b1"):
        node_clients.wait_events(name, "coins:earned", 1)
    for name in ("a0", "a2"):
        node_clients.assert_no_event(name, within=QUIET / 2)
        assert node_clients.state(name)["connected"] is False
        assert [r["type"] for r in node_clients.log(name)].count("connect") == 1, "it came back"
    assert node_clients.state("b0")["connected"]
    assert node_clients.state("b1")["connected"]
    wait_until(lambda: not pub.is_online(user), EFFECTIVE, f"{user} offline after the kick")

    # kicked, not banned: a new connection with a token is a new session
    connect(node_clients, "again", r1, token(user))
    pub.emit("coins:earned", {**COINS, "n": "again"}, user=user).result()
    assert node_clients.wait_events("again", "coins:earned", 1)[0].payload["n"] == "again"


# -- presence --------------------------------------------------------------------------------


def test_presence_across_replicas_and_after_a_replica_is_killed(
    node_clients: NodeClients, shared_redis: RedisServer,
) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}"  # counts of this test only
    env = {**ENV, "REDIS_URL": shared_redis.url, "CHANNEL_PREFIX": prefix, "KEY_PREFIX": prefix}
    r0 = GatewayProcess(env, name="presence-0")
    r1 = GatewayProcess(env, name="presence-1")
    try:
        r0.start()
        r1.start()
        r0.wait_ready()
        r1.wait_ready()
        with Publisher(shared_redis.url, channel_prefix=prefix, key_prefix=prefix) as p:
            _presence_scenario(node_clients, p, r0, r1)
    finally:
        for replica in (r0, r1):
            replica.stop()
            print(f"-- {replica.name} log:\n{replica.log_tail(80)}")


def _presence_scenario(clients: NodeClients, pub: Publisher, r0: GatewayProcess,
                       r1: GatewayProcess) -> None:
    both, only1, only0 = uid(), uid(), uid()
    redis = pub.client
    names = pub.names
    assert pub.online_count() == 0
    assert pub.is_online(both) is False
    no_retry = {"reconnection": False}  # r1 is killed below: no reconnection noise
    connect(clients, "both0", r0, token(both))
    connect(clients, "both1", r1, token(both), **no_retry)
    connect(clients, "only1", r1, token(only1), "polling", **no_retry)
    connect(clients, "only0", r0, token(only0))
    for user in (both, only1, only0):
        wait_until(lambda user=user: pub.is_online(user), EFFECTIVE, f"{user} online")
    assert pub.is_online(uid()) is False

    def replicas_of(user: str) -> set[str]:
        return {_text(m) for m in redis.smembers(names.presence_key(user))}

    # v2 presence: each user's set of replicas (in the user's slot) ...
    [id0] = replicas_of(only0)
    [id1] = replicas_of(only1)
    assert id0 != id1
    assert replicas_of(both) == {id0, id1}, "a user on two replicas is in both replicas' presence"
    # ... and the live replicas with the users each holds, reported by their heartbeat (every
    # 5 s): online_count adds those up, so `both` (on two replicas) counts twice
    # (docs/producers.md, "is_online", "online_count").
    wait_until(lambda: pub.online_count() == 4, COUNTED, "online_count: 2 users on each replica",
               every=0.25)

    clients.disconnect("only0")
    wait_until(lambda: not pub.is_online(only0), EFFECTIVE, "offline after its last socket left")
    assert replicas_of(only0) == set()
    wait_until(lambda: pub.online_count() == 3, COUNTED, "online_count after only0 left", every=0.25)
    clients.disconnect("both1")  # one of its two sockets: still online
    wait_until(lambda: scrape(r1).get(("ws_connections_active", ())) == 1, EFFECTIVE,
               "r1 saw the socket go")
    wait_until(lambda: replicas_of(both) == {id0}, EFFECTIVE, "both's last socket on r1 went")
    assert pub.is_online(both) is True
    wait_until(lambda: pub.online_count() == 2, COUNTED, "online_count after both1 left", every=0.25)

    def live() -> set[str]:
        cutoff = int(time.time() * 1000) - 15_000
        return {_text(m) for m in redis.zrangebyscore(names.replicas_key(), f"({cutoff}", "+inf")}

    assert live() == {id0, id1}
    r1.kill()  # SIGKILL: no goodbye, its presence entries stay behind in Redis
    # r1 held only1's only socket: presence forgets it once r1's heartbeat is stale (≤ 15 s)
    wait_until(lambda: not pub.is_online(only1), PRESENCE_GONE, "a killed replica's users expire",
               every=0.5)
    assert live() == {id0}, "the killed replica still counts as live"
    assert pub.is_online(both) is True
    assert pub.online_count() == 1
    pub.emit("coins:earned", COINS, user=both).result()
    assert clients.wait_events("both0", "coins:earned", 1)[0].payload == COINS


def test_async_publisher_reaches_a_client_and_sees_it_online(
    node_clients: NodeClients, cluster: GatewayCluster, shared_redis: RedisServer,
) -> None:
    user = uid()
    connect(node_clients, "a", cluster[1], token(user))

    async def produce() -> tuple[str, bool]:
        async with AsyncPublisher(shared_redis.url) as apub:
            offset = await apub.emit("coins:earned", COINS, user=user)
            deadline = time.monotonic() + EFFECTIVE
            online = await apub.is_online(user)
            while not online and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                online = await apub.is_online(user)
            return offset, online

    offset, online = asyncio.run(produce())
    assert offset
    assert online
    assert node_clients.wait_events("a", "coins:earned", 1)[0].payload == COINS


# -- a replica receives only what concerns it ------------------------------------------------


def test_an_event_for_one_user_is_received_by_exactly_one_replica(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher, shared_redis: RedisServer,
) -> None:
    user = uid()
    connect(node_clients, "a", cluster[1], token(user))
    connect(node_clients, "a-again", cluster[1], token(user), "polling")  # two sockets, one replica
    assert shardnumsub(shared_redis, channel_of(f"user:{user}")) == 1
    before = [events_received(r) for r in cluster]
    count = 5
    for n in range(count):
        pub.emit("coins:earned", {**COINS, "n": n}, user=user).result()
    for name in ("a", "a-again"):
        events = node_clients.wait_events(name, "coins:earned", count)
        assert [e.payload["n"] for e in events] == list(range(count))
    after = [events_received(r) for r in cluster]
    assert [b - a for a, b in zip(before, after, strict=True)] == [0, count, 0]

    # control messages about the user go to the same channel: one replica again
    controls = [scrape(r).get(("bus_messages_received_total", (("kind", "control"),)), 0.0) for r in cluster]
    room = f"classroom:{kid()}"
    pub.join(user, room)
    wait_until(lambda: room in rooms_of(node_clients, "a"), EFFECTIVE, "joined", every=0.1)
    now = [scrape(r).get(("bus_messages_received_total", (("kind", "control"),)), 0.0) for r in cluster]
    assert [b - a for a, b in zip(controls, now, strict=True)] == [0, 1, 0]


def test_an_event_for_a_room_is_received_by_the_replicas_holding_it(
    node_clients: NodeClients, cluster: GatewayCluster, pub: Publisher, shared_redis: RedisServer,
) -> None:
    room = f"classroom:{kid()}"
    connect(node_clients, "m0", cluster[0], token(uid(), classrooms=[room.split(":")[1]]))
    connect(node_clients, "m2", cluster[2], token(uid(), classrooms=[room.split(":")[1]]))
    connect(node_clients, "x1", cluster[1], token(uid()))
    assert shardnumsub(shared_redis, channel_of(room)) == 2
    before = [events_received(r) for r in cluster]
    pub.emit("coins:earned", COINS, room=room).result()
    for name in ("m0", "m2"):
        node_clients.wait_events(name, "coins:earned", 1)
    after = [events_received(r) for r in cluster]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 0, 1]
    node_clients.assert_no_event("x1", within=QUIET / 2)


# -- the operators' command line -------------------------------------------------------------


def _cli(redis_url: str, *args: str, env_url: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CHANNEL_PREFIX", "KEY_PREFIX"}}
    argv = [sys.executable, "-m", "publisher"]
    if env_url:
        env["REDIS_URL"] = redis_url
    else:
        argv += ["--redis-url", redis_url]
    return subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_emit_reaches_a_client(
    node_clients: NodeClients, cluster: GatewayCluster, shared_redis: RedisServer,
) -> None:
    user = str(secrets.randbelow(10**9) + 10**9)  # a numeric id, as the backend's
    room = kid()
    connect(node_clients, "a", cluster[2], token(int(user), classrooms=[room]))
    connect(node_clients, "other", cluster[0], token(uid()))

    done = _cli(shared_redis.url, "emit", "coins:earned", json.dumps(COINS), "--user", user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the CLI prints the offset"
    assert node_clients.wait_events("a", "coins:earned", 1)[0].payload == COINS

    done = _cli(shared_redis.url, "emit", "achievement:unlocked",
                json.dumps({"achievementId": "a", "name": "n", "description": "d", "icon": "i",
                            "xpReward": 5}), "--room", f"classroom:{room}", env_url=False)
    assert done.returncode == 0, done.stderr
    assert node_clients.wait_events("a", "achievement:unlocked", 1)[0].payload["xpReward"] == 5

    online = _cli(shared_redis.url, "online", user)
    assert (online.returncode, online.stdout.strip()) == (0, "true"), online.stderr

    bad = _cli(shared_redis.url, "emit", "coins:earned", "{amount: 5", "--user", user)
    assert bad.returncode == 2
    assert bad.stderr.strip()
    # strict (opt-in since producers may send any JSON payload): the contract's schema is checked
    wrong = _cli(shared_redis.url, "emit", "--strict", "coins:earned", json.dumps({"amount": "x"}), "--user", user)
    assert wrong.returncode == 2
    assert "amount" in wrong.stderr
    node_clients.assert_no_event("a", "coins:earned", within=QUIET, allowed=1)
    node_clients.assert_no_event("other", within=0.05)
