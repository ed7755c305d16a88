"""Publisher and AsyncPublisher on a real Redis Cluster (tests/support/redis_cluster.py, 3
primaries + 3 replicas), through `redis+cluster://` URLs: each room's events in the room's
stream on the shard that owns its slot, the publishes spread over the primaries, sharded
delivery on the owner, join/leave/disconnect_user on the user's shard, presence across slots,
the command line; and a plain `redis://` URL at a cluster node refused with the fix named.

One cluster for the module; every test uses names of its own (a uuid in each).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from publisher import AsyncPublisher, ClusterModeError, Message, Publisher, parse_position
from publisher.cluster import key_slot
from publisher.envelope import EVERYONE, BusNames, Control, Event, decode
from publisher.scripts import PUBLISH
from publisher.session import SessionRecord
from publisher.transports import StandaloneTransport, async_transport, sync_transport
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.integration

NAMES = BusNames()
ARRIVAL = 3.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture
def pub(cluster: RedisCluster) -> Iterator[Publisher]:
    with Publisher(cluster.url()) as publisher:
        yield publisher


def fresh(what: str = "room") -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


class Owners:
    """Which primary serves each slot, read once (CLUSTER NODES), for many names."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.primaries = [n for n in cluster.nodes() if n.role == "primary" and not n.failed and n.slots]

    def of(self, name: str) -> int:
        slot = key_slot(name)
        return next(node.port for node in self.primaries if node.owns(slot))

    def rooms_on(self, port: int, count: int = 1) -> list[str]:
        """Fresh room names whose slot `port` serves."""
        found: list[str] = []
        while len(found) < count:
            room = f"quiz:{uuid.uuid4().hex[:10]}"
            if self.of(NAMES.history_key(room)) == port:
                found.append(room)
        return found


def script_calls(cluster: RedisCluster, port: int) -> int:
    stats = cluster.commandstats(port)
    return stats.get("eval", 0) + stats.get("evalsha", 0)


def stream_ids(cluster: RedisCluster, port: int, key: str) -> list[str]:
    node = cluster.client(port)
    try:
        return [entry_id.decode() for entry_id, _ in node.xrange(key)]
    finally:
        node.close()


def sharded(cluster: RedisCluster, port: int, channel: str) -> redis.client.PubSub:
    """SSUBSCRIBE to `channel` on the node `port`, confirmed."""
    pubsub = cluster.client(port).pubsub()
    pubsub.ssubscribe(channel)
    confirmation = next_message(pubsub)
    assert confirmation is not None
    assert confirmation["type"] == "ssubscribe", confirmation
    return pubsub


def next_message(pubsub: redis.client.PubSub, timeout: float = ARRIVAL) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        if message is not None:
            return message
    return None


def save_session(cluster: RedisCluster, port: int, user: str, pid: str, rooms: list[str]) -> None:
    now = int(time.time() * 1000)
    record = SessionRecord(f"sid-{pid}", user, tuple(rooms), dict.fromkeys(rooms, "1-1"), now, now)
    node = cluster.client(port)
    try:
        node.hset(NAMES.session_key(user, pid), mapping=record.to_hash())
        node.zadd(NAMES.user_sessions_key(user), {pid: now + 60_000})
    finally:
        node.close()


def load_session(cluster: RedisCluster, port: int, user: str, pid: str) -> SessionRecord:
    node = cluster.client(port, decode_responses=True)
    try:
        return SessionRecord.from_hash(node.hgetall(NAMES.session_key(user, pid)))
    finally:
        node.close()


# -- events --------------------------------------------------------------------------------


def test_emits_land_in_each_rooms_stream_on_its_shard_spread_over_the_primaries(
        cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    primaries = [node.port for node in owners.primaries]
    assert len(primaries) == 3
    rooms = [fresh() for _ in range(90)]
    # emit_many makes one call per slot, and 90 random rooms share a slot about one run in
    # five: two rooms of one slot, every run, so that the count below is right either way.
    slot = key_slot(NAMES.history_key(rooms[0]))
    rooms.append(next(room for room in iter(fresh, None) if key_slot(NAMES.history_key(room)) == slot))
    expected = dict.fromkeys(primaries, 0)
    for room in rooms:  # the singles: one call each
        expected[owners.of(NAMES.history_key(room))] += 1
    for key in {key_slot(key): key for key in map(NAMES.history_key, rooms)}.values():
        expected[owners.of(key)] += 1
    cluster.reset_stats()

    positions = pub.emit_many([Message("x", i, room=room) for i, room in enumerate(rooms)])  # grouped by shard
    singles = [pub.emit("y", i, room=room).result() for i, room in enumerate(rooms)]  # one call each: no planning
    for room, first, second in zip(rooms, positions, singles, strict=True):
        assert stream_ids(cluster, owners.of(NAMES.history_key(room)), NAMES.history_key(room)) == [first, second]
    calls = {port: script_calls(cluster, port) for port in primaries}
    assert calls == expected
    assert all(n >= 30 for n in calls.values()), calls  # every primary took its share
    replicas = [port for port in cluster.running() if port not in primaries]
    assert sum(script_calls(cluster, port) for port in replicas) == 0


def test_a_batch_keeps_each_rooms_order_across_shards(cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    rooms = [room for node in owners.primaries for room in owners.rooms_on(node.port, 2)]
    with pub.pipeline() as batch:
        for i in range(60):
            batch.emit("x", i, room=rooms[i % len(rooms)])
    for j, room in enumerate(rooms):
        key = NAMES.history_key(room)
        assert stream_ids(cluster, owners.of(key), key) == batch.positions[j::len(rooms)]


def test_a_sharded_subscriber_on_the_owner_gets_the_publish_with_its_position(
        cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    for node in owners.primaries:  # a room on each shard
        [room] = owners.rooms_on(node.port)
        channel = NAMES.room_channel(room)
        assert owners.of(channel) == node.port
        [replica] = cluster.replicas_of(node.port)
        on_owner, on_replica = sharded(cluster, node.port, channel), sharded(cluster, replica, channel)
        try:
            position = pub.emit("coins:earned", {"n": 1}, room=room).result()
            for pubsub in (on_owner, on_replica):
                message = next_message(pubsub)
                assert message is not None
                assert (message["type"], message["channel"]) == ("smessage", channel.encode())
                event = decode(message["data"])
                assert isinstance(event, Event)
                assert (event.name, event.data, event.room) == ("coins:earned", {"n": 1}, room)
                assert event.position == position
        finally:
            on_owner.close()
            on_replica.close()


def test_broadcasts_and_users_have_their_own_slots(cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    everyone = NAMES.history_key(EVERYONE)
    listener = sharded(cluster, owners.of(everyone), NAMES.room_channel(EVERYONE))
    try:
        position = pub.emit("maintenance", {"at": "22:00"}, broadcast=True).result()
        message = next_message(listener)
        assert message is not None
        event = decode(message["data"])
        assert isinstance(event, Event)
        assert (event.room, event.position) == (None, position)
        assert stream_ids(cluster, owners.of(everyone), everyone)[-1] == position
    finally:
        listener.close()
    user = fresh("u")
    position = pub.coins_earned(user, amount=1, reason="r", new_balance=1).result()
    key = NAMES.history_key(f"user:{user}")
    assert stream_ids(cluster, owners.of(key), key) == [position]


# -- join, leave, disconnect_user ----------------------------------------------------------


def test_join_and_leave_edit_sessions_on_the_users_shard_and_publish_there(
        cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    user = fresh("u")
    home = owners.of(NAMES.user_sessions_key(user))
    # rooms on the other shards: their positions are read there, the sessions edited at home
    away = [port for port in (node.port for node in owners.primaries) if port != home]
    rooms = [owners.rooms_on(port)[0] for port in away]
    before = {room: pub.emit("x", 0, room=room).result() for room in rooms}
    save_session(cluster, home, user, "p1", [f"user:{user}"])
    channel = NAMES.room_channel(f"user:{user}")
    assert owners.of(channel) == home
    listener = sharded(cluster, home, channel)
    try:
        joined = pub.join(user, [*rooms, "quiz:never-used"])
        assert {room: joined[room] for room in rooms} == before  # each room's newest entry, read on its shard
        assert parse_position(joined["quiz:never-used"]).seq == 2**64 - 1  # an empty stream: "empty at ms"
        record = load_session(cluster, home, user, "p1")
        assert record.rooms == (f"user:{user}", *rooms, "quiz:never-used")
        assert {room: record.starts[room] for room in joined} == joined
        message = next_message(listener)
        assert message is not None
        control = decode(message["data"])
        assert isinstance(control, Control)
        assert (control.kind, control.user) == ("join", user)
        assert {room: str(at) for room, at in control.rooms} == joined

        later = pub.emit("x", 1, room=rooms[0]).result()
        left = pub.leave(user, rooms[0])
        assert left == {rooms[0]: later}
        record = load_session(cluster, home, user, "p1")
        assert rooms[0] not in record.rooms
        assert record.left == {rooms[0]: later}
        message = next_message(listener)
        assert message is not None
        control = decode(message["data"])
        assert isinstance(control, Control)
        assert control.kind == "leave"
    finally:
        listener.close()


def test_disconnect_user_on_the_users_shard(cluster: RedisCluster, pub: Publisher) -> None:
    owners = Owners(cluster)
    user = fresh("u")
    home = owners.of(NAMES.user_sessions_key(user))
    save_session(cluster, home, user, "p1", [f"user:{user}"])
    save_session(cluster, home, user, "p2", [f"user:{user}"])
    listener = sharded(cluster, home, NAMES.room_channel(f"user:{user}"))
    try:
        assert pub.disconnect_user(user) == 2
        message = next_message(listener)
        assert message is not None
        kick = decode(message["data"])
        assert isinstance(kick, Control)
        assert (kick.kind, kick.user) == ("kick", user)
    finally:
        listener.close()
    node = cluster.client(home)
    try:
        assert not node.exists(NAMES.session_key(user, "p1"), NAMES.session_key(user, "p2"),
                               NAMES.user_sessions_key(user))
        assert 239_000 < node.pttl(NAMES.revoked_key(user)) <= 240_000
    finally:
        node.close()


# -- presence ------------------------------------------------------------------------------


def test_presence_across_the_users_slot_and_the_replicas_slot(cluster: RedisCluster) -> None:
    prefix = fresh("k")
    names = BusNames(prefix, prefix)
    owners = Owners(cluster)
    users = [fresh("u") for _ in range(6)]
    assert len({owners.of(names.presence_key(u)) for u in users} | {owners.of(names.replicas_key())}) > 1
    now = int(time.time() * 1000)
    live = cluster.client(owners.of(names.replicas_key()))
    try:
        live.zadd(names.replicas_key(), {"a": now, "b": now - 1_000, "stale": now - 20_000})
        live.hset(names.replica_users_key(), mapping={"a": 3, "b": 2, "stale": 7})
    finally:
        live.close()
    where = {users[0]: ["a"], users[1]: ["a", "b"], users[2]: ["stale"], users[3]: ["stale", "b"]}
    for user, replicas in where.items():
        node = cluster.client(owners.of(names.presence_key(user)))
        try:
            node.sadd(names.presence_key(user), *replicas)
        finally:
            node.close()
    with Publisher(cluster.url(), key_prefix=prefix, channel_prefix=prefix) as pub:
        assert [pub.is_online(user) for user in users] == [True, True, False, True, False, False]
        assert pub.online_count() == 5  # a's 3 and b's 2: each live replica's own count


# -- async, the command line ---------------------------------------------------------------


async def test_the_async_publisher_on_a_cluster(cluster: RedisCluster) -> None:
    """In the test's event loop, where a blocking call fails the test: the harness is asked
    from a thread."""
    owners = await asyncio.to_thread(Owners, cluster)
    rooms = [fresh() for _ in range(30)]
    user = fresh("u")
    async with AsyncPublisher(cluster.url()) as pub:
        positions = await pub.emit_many([Message("x", i, room=room) for i, room in enumerate(rooms)])
        async with pub.pipeline() as batch:
            for room in rooms:
                batch.emit("y", 1, room=room)
        joined = await pub.join(user, rooms[:3])
        assert await pub.disconnect_user(user) == 0
        assert await pub.is_online(user) is False
        assert await pub.online_count() >= 0
    for room, first, second in zip(rooms, positions, batch.positions, strict=True):
        key = NAMES.history_key(room)
        assert await asyncio.to_thread(stream_ids, cluster, owners.of(key), key) == [first, second]
    assert joined == dict(zip(rooms[:3], batch.positions[:3], strict=True))


def test_the_command_line_takes_a_cluster_url(cluster: RedisCluster) -> None:
    owners = Owners(cluster)
    room = fresh()
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", cluster.url(), "emit", "news", '{"n": 1}',
         "--room", room],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    key = NAMES.history_key(room)
    assert stream_ids(cluster, owners.of(key), key) == [proc.stdout.strip()]


# -- a plain URL at a cluster node ---------------------------------------------------------


def test_a_plain_url_at_a_cluster_node_is_refused_naming_redis_cluster(cluster: RedisCluster) -> None:
    port = cluster.primary_ports()[0]
    prefix = fresh("k")
    with Publisher(f"redis://127.0.0.1:{port}/0", key_prefix=prefix) as pub:
        for _ in range(2):  # every call, not only the first
            with pytest.raises(ClusterModeError) as info:
                pub.emit("x", 1, room=fresh()).result()
            assert f"write redis+cluster://127.0.0.1:{port}" in str(info.value)
        with pytest.raises(ClusterModeError):
            pub.join("u", "quiz:1")
    node = cluster.client(port)
    try:
        assert not node.keys(f"{prefix}:*")  # nothing reached the node
    finally:
        node.close()
    runner = sync_transport(f"redis://127.0.0.1:{port}")
    assert isinstance(runner, StandaloneTransport)
    with pytest.raises(ClusterModeError, match=r"redis\+cluster://127\.0\.0\.1:"):
        runner.check_standalone()  # asked at once, for a caller that fails at start
    runner.close()
    given = cluster.client(port)
    with Publisher(client=given) as pub, pytest.raises(ClusterModeError, match=r"redis\+cluster://"):
        pub.emit("x", 1, broadcast=True).result()
    given.close()


async def test_a_plain_url_at_a_cluster_node_is_refused_async(cluster: RedisCluster) -> None:
    [port, *_] = await asyncio.to_thread(cluster.primary_ports)
    async with AsyncPublisher(f"redis://127.0.0.1:{port}/0") as pub:
        with pytest.raises(ClusterModeError, match=r"redis\+cluster://127\.0\.0\.1:"):
            await pub.emit("x", 1, broadcast=True)
    runner = async_transport(f"rediss://127.0.0.1:{port}/0")
    await runner.close()


def test_the_command_line_refuses_a_plain_url_at_a_cluster_node(cluster: RedisCluster) -> None:
    port = cluster.primary_ports()[0]
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", f"redis://127.0.0.1:{port}/0", "kick", "42"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert f"redis+cluster://127.0.0.1:{port}" in proc.stderr


def test_one_flush_writes_one_script_call_per_slot_to_each_slots_primary(cluster: RedisCluster) -> None:
    """Auto-pipelining on a cluster: the emits queued for one write are grouped by slot, one
    publish.lua call per slot group, each to its slot's primary; a room's events keep their
    order."""
    owners = Owners(cluster)
    rooms = [room for port in cluster.primary_ports() for room in owners.rooms_on(port, 4)]
    with Publisher(cluster.url(), linger=30.0) as pub:  # written by the flush, not the linger
        pub.emit("warm", 0, broadcast=True).result()
        for port in cluster.primary_ports():  # every node knows the script: EVALSHA from now on
            cluster.client(port).script_load(PUBLISH.source)
        cluster.reset_stats()
        futures = {room: [pub.emit("x", i, room=room) for i in range(3)] for room in rooms}
        pub.flush()
    slots = {key_slot(NAMES.history_key(room)) for room in rooms}
    assert sum(script_calls(cluster, port) for port in cluster.primary_ports()) == len(slots)
    for port in cluster.primary_ports():
        mine = {key_slot(NAMES.history_key(room)) for room in rooms if owners.of(NAMES.history_key(room)) == port}
        assert script_calls(cluster, port) == len(mine), "one call per slot, on the slot's primary"
    for room, room_futures in futures.items():
        key = NAMES.history_key(room)
        assert stream_ids(cluster, owners.of(key), key) == [f.result() for f in room_futures]


async def test_the_async_publisher_groups_one_loop_turn_by_slot(cluster: RedisCluster) -> None:
    owners = await asyncio.to_thread(Owners, cluster)
    ports = await asyncio.to_thread(cluster.primary_ports)
    rooms = [room for port in ports for room in owners.rooms_on(port, 2)]
    async with AsyncPublisher(cluster.url()) as pub:
        await pub.emit("warm", 0, broadcast=True)
        for port in ports:
            await asyncio.to_thread(cluster.client(port).script_load, PUBLISH.source)
        await asyncio.to_thread(cluster.reset_stats)
        positions = await asyncio.gather(*(pub.emit("x", i, room=room) for room in rooms for i in range(2)))
    slots = {key_slot(NAMES.history_key(room)) for room in rooms}
    calls = await asyncio.to_thread(lambda: sum(script_calls(cluster, port) for port in ports))
    assert calls == len(slots)
    for n, room in enumerate(rooms):
        key = NAMES.history_key(room)
        stored = await asyncio.to_thread(stream_ids, cluster, owners.of(key), key)
        assert stored == list(positions[2 * n:2 * n + 2])
