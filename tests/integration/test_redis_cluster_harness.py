"""tests/support/redis_cluster.py against real redis-server processes, and the sharded pub/sub
facts of Redis Cluster that the bus on Redis Cluster (issue 13) builds on.

Most tests share one 3+3 cluster (module fixture) and use hash tags of their own, so they do not
see each other's keys or channels; the ones that move slots or add nodes only move their own
tag's slot, and every test asks the cluster who serves what instead of remembering it. The
failover test kills a primary, so it starts a cluster of its own.

Facts pinned here (Redis 7.0):
- SSUBSCRIBE is served by the slot's primary and by its replicas; SPUBLISH on either reaches the
  subscribers of both. Any other node answers MOVED.
- SPUBLISH inside EVAL is fine when the channel shares the hash tag of the script's KEYS. A
  channel whose slot another node serves is refused ("Script attempted to access a non local key
  in a cluster node"). A channel in another slot of the same node is accepted by a script
  without a shebang, refused by one with `#!lua` ("... keys that do not hash to the same slot").
- While a slot migrates (IMPORTING / MIGRATING, keys moved), its shard channels stay with the
  old owner: SPUBLISH there reaches its subscribers, no ASK. Once a node learns the slot is
  served elsewhere (SETSLOT NODE on it, or gossip after SETSLOT NODE on the new owner), it sends
  each subscriber of the slot's channels a `sunsubscribe` push (count 0), replicas included, and
  answers SPUBLISH / SSUBSCRIBE with MOVED to the new owner.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.client

from tests.support.redis_cluster import FORBIDDEN_PORT, SLOTS, RedisCluster

pytestmark = pytest.mark.integration

ARRIVAL = 5.0  # bound on waiting for one pub/sub message


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


def tag() -> str:
    """A hash tag no other test uses: `{room:<hex>}`."""
    return f"{{room:{uuid.uuid4().hex[:12]}}}"


def channel(room_tag: str) -> str:
    return f"socket.io#/notifications#{room_tag}#"


def other_primary(cluster: RedisCluster, port: int) -> int:
    return next(p for p in cluster.primary_ports() if p != port)


def tag_on(cluster: RedisCluster, port: int, *, besides_slot: int | None = None) -> str:
    """A fresh hash tag whose slot `port` serves (and that is not `besides_slot`)."""
    for _ in range(1000):
        candidate = tag()
        if cluster.primary_for(candidate) == port and cluster.slot(candidate) != besides_slot:
            return candidate
    raise AssertionError(f"no hash tag served by :{port} in 1000 tries")


def tag_off(cluster: RedisCluster, port: int) -> str:
    """A fresh hash tag whose slot another primary than `port` serves."""
    for _ in range(1000):
        candidate = tag()
        if cluster.primary_for(candidate) != port:
            return candidate
    raise AssertionError(f"no hash tag served elsewhere than :{port} in 1000 tries")


def next_message(pubsub: redis.client.PubSub, timeout: float = ARRIVAL) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        if message is not None:
            return message
    return None


def subscribed(cluster: RedisCluster, port: int, name: str) -> redis.client.PubSub:
    pubsub = cluster.client(port).pubsub()
    pubsub.ssubscribe(name)
    confirmation = next_message(pubsub)
    assert confirmation is not None
    assert confirmation["type"] == "ssubscribe", confirmation
    return pubsub


def script_error(client: redis.Redis, script: str, *args: Any) -> str:
    with pytest.raises(redis.ResponseError) as caught:
        client.eval(script, *args)
    return str(caught.value)


# -- the cluster as started ------------------------------------------------------------------


def test_three_primaries_each_with_a_replica_in_sync(cluster: RedisCluster) -> None:
    nodes = cluster.nodes()
    primaries = [n for n in nodes if n.role == "primary" and n.slots]
    replicas = [n for n in nodes if n.role == "replica"]
    assert len(primaries) == 3
    assert sorted(r.primary_id for r in replicas) == sorted(p.node_id for p in primaries)
    assert sum(hi - lo + 1 for p in primaries for lo, hi in p.slots) == SLOTS
    assert {n.port for n in nodes} == set(cluster.running())
    assert all(n.host == "127.0.0.1" and not n.failed for n in nodes)
    assert FORBIDDEN_PORT not in cluster.running()
    for replica in replicas:
        info = cluster.client(replica.port, decode_responses=True).info("replication")
        assert info["master_link_status"] == "up"
    cluster.wait_stable(timeout=10)  # what start() waited for still holds


def test_url_and_startup_nodes_list_every_running_node(cluster: RedisCluster) -> None:
    ports = cluster.running()
    assert cluster.startup_nodes() == [("127.0.0.1", p) for p in ports]
    assert cluster.url() == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    assert cluster.url([ports[0]], scheme="rediss+cluster") == f"rediss+cluster://127.0.0.1:{ports[0]}"


def test_primary_for_names_the_node_that_serves_the_key(cluster: RedisCluster) -> None:
    room = tag()
    key, name = f"ngw:{room}:h", channel(room)
    owner = cluster.primary_for(key)
    assert cluster.primary_for(name) == owner  # a shard channel hashes by its tag too
    assert cluster.owner(cluster.slot(key)) == owner
    assert cluster.client(owner).set(key, "v")
    with pytest.raises(redis.exceptions.MovedError) as moved:
        cluster.client(other_primary(cluster, owner)).get(key)
    assert str(moved.value) == f"{cluster.slot(key)} 127.0.0.1:{owner}"


def test_commandstats_counts_the_commands_run(cluster: RedisCluster) -> None:
    room = tag()
    owner = cluster.primary_for(channel(room))
    cluster.reset_stats([owner])
    client = cluster.client(owner)
    for _ in range(5):
        client.execute_command("SPUBLISH", channel(room), "x")
    client.set(f"ngw:{room}:k", "v")
    stats = cluster.commandstats(owner)
    assert stats["spublish"] == 5
    assert stats["set"] == 1
    assert all(isinstance(calls, int) for calls in stats.values())


def test_a_restarted_replica_comes_back_in_sync(cluster: RedisCluster) -> None:
    room = tag()
    key = f"ngw:{room}:h"
    owner = cluster.primary_for(key)
    [replica] = cluster.replicas_of(owner)
    before = cluster.node_id(replica)
    cluster.client(owner).set(key, "before restart")
    old_pid = cluster.pids()[replica]
    cluster.restart(replica)
    assert cluster.pids()[replica] != old_pid
    assert cluster.node_id(replica) == before
    assert cluster.replicas_of(owner) == [replica]
    reader = cluster.client(replica)
    reader.execute_command("READONLY")
    assert reader.get(key) == b"before restart"  # synced again from its primary


# -- changing the topology -------------------------------------------------------------------


def test_migrate_slot_moves_the_keys_and_they_stay_served(cluster: RedisCluster) -> None:
    room = tag()
    keys = [f"ngw:{room}:{i}" for i in range(7)]
    source = cluster.primary_for(keys[0])
    target = other_primary(cluster, source)
    slot = cluster.slot(keys[0])
    for key in keys:
        cluster.client(source).set(key, key)
    steps: list[str] = []
    reader = cluster.cluster_client()  # follows MOVED and ASK, as the gateway's client will

    def every_key_readable(step: str) -> None:
        steps.append(step)
        assert [reader.get(k) for k in keys] == [k.encode() for k in keys], step

    try:
        cluster.migrate_slot(slot, target, batch=3, on_step=every_key_readable)
        assert steps[:2] == ["importing", "migrating"]
        assert steps[2:5] == ["keys 3", "keys 6", "keys 7"]
        assert steps[5:7] == [f"node {target}", f"node {source}"]
        for port in cluster.running():
            assert cluster.owner(slot, via=port) == target
        assert cluster.primary_for(keys[0]) == target
        assert cluster.client(target).mget(keys) == [k.encode() for k in keys]
        assert cluster.client(source, decode_responses=True).execute_command(
            "CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        every_key_readable("after")
    finally:
        reader.close()


def test_add_primary_joins_an_empty_primary_that_can_take_a_slot(cluster: RedisCluster) -> None:
    room = tag()
    key = f"ngw:{room}:h"
    cluster.client(cluster.primary_for(key)).set(key, "v")
    port = cluster.add_primary()
    new_id = cluster.node_id(port)
    for via in cluster.running():
        known = {n.node_id: n for n in cluster.nodes(via=via)}
        assert known[new_id].role == "primary"
        assert not known[new_id].failed
        assert known[new_id].slots == ()
    cluster.migrate_slot(cluster.slot(key), port)
    assert cluster.primary_for(key) == port
    assert cluster.client(port).get(key) == b"v"
    assert f"127.0.0.1:{port}" in cluster.url()


# -- sharded pub/sub -------------------------------------------------------------------------


def test_ssubscribe_on_the_owner_or_its_replica_receives_spublish(cluster: RedisCluster) -> None:
    name = channel(tag())
    owner = cluster.primary_for(name)
    [replica] = cluster.replicas_of(owner)
    on_owner, on_replica = subscribed(cluster, owner, name), subscribed(cluster, replica, name)
    try:
        assert cluster.client(owner).execute_command("SPUBLISH", name, "from the primary") == 1
        # a replica takes SPUBLISH too (it counts its own subscribers) and the shard gets it
        assert cluster.client(replica).execute_command("SPUBLISH", name, "from the replica") == 1
        for pubsub in (on_owner, on_replica):
            for data in (b"from the primary", b"from the replica"):
                message = next_message(pubsub)
                assert message is not None
                assert (message["type"], message["channel"], message["data"]) == ("smessage", name.encode(), data)
        elsewhere = other_primary(cluster, owner)
        with pytest.raises(redis.exceptions.MovedError) as moved:
            cluster.client(elsewhere).execute_command("SSUBSCRIBE", name)
        assert str(moved.value) == f"{cluster.slot(name)} 127.0.0.1:{owner}"
        with pytest.raises(redis.exceptions.MovedError):
            cluster.client(elsewhere).execute_command("SPUBLISH", name, "x")
    finally:
        on_owner.close()
        on_replica.close()


def test_spublish_from_a_script_whose_keys_share_the_channels_hash_tag(cluster: RedisCluster) -> None:
    room = tag()
    key, name = f"ngw:{room}:h", channel(room)
    owner = cluster.primary_for(key)
    pubsub = subscribed(cluster, owner, name)
    script = "redis.call('HINCRBY', KEYS[1], 'seq', 1); return redis.call('SPUBLISH', ARGV[1], ARGV[2])"
    try:
        for shebang in ("", "#!lua\n"):
            assert cluster.client(owner).eval(shebang + script, 1, key, name, f"via EVAL {shebang!r}") == 1
            message = next_message(pubsub)
            assert message is not None
            assert message["data"] == f"via EVAL {shebang!r}".encode()
        assert cluster.client(owner).hget(key, "seq") == b"2"
    finally:
        pubsub.close()


def test_spublish_from_a_script_to_another_nodes_channel_is_refused(cluster: RedisCluster) -> None:
    room = tag()
    key = f"ngw:{room}:h"
    owner = cluster.primary_for(key)
    far = channel(tag_off(cluster, owner))
    script = "redis.call('HINCRBY', KEYS[1], 'seq', 1); return redis.call('SPUBLISH', ARGV[1], 'x')"
    client = cluster.client(owner)
    for shebang, line in (("", 1), ("#!lua\n", 2), ("#!lua flags=allow-cross-slot-keys\n", 2)):
        sha = client.script_load(shebang + script)
        error = script_error(client, shebang + script, 1, key, far)
        assert error == (f"Script attempted to access a non local key in a cluster node "
                         f"script: {sha}, on @user_script:{line}.")
    # the key's write ran before the refusal, and stays: a script is not a transaction
    assert client.hget(key, "seq") == b"3"
    # the same with no KEYS at all: only the node that serves the channel may publish on it
    error = script_error(client, "return redis.call('SPUBLISH', ARGV[1], 'x')", 0, far)
    assert error.startswith("Script attempted to access a non local key in a cluster node script: ")


def test_spublish_from_a_script_to_another_slot_of_the_same_node(cluster: RedisCluster) -> None:
    room = tag()
    key = f"ngw:{room}:h"
    owner = cluster.primary_for(key)
    near = channel(tag_on(cluster, owner, besides_slot=cluster.slot(key)))
    script = "redis.call('HINCRBY', KEYS[1], 'seq', 1); return redis.call('SPUBLISH', ARGV[1], 'x')"
    client = cluster.client(owner)
    # no shebang: the cross-slot access is not checked (Redis keeps old scripts working)
    assert client.eval(script, 1, key, near) == 0
    # a `#!lua` shebang turns the check on: a mismatch is an error, not a silent publish
    sha = client.script_load("#!lua\n" + script)
    error = script_error(client, "#!lua\n" + script, 1, key, near)
    assert error == (f"Script attempted to access keys that do not hash to the same slot "
                     f"script: {sha}, on @user_script:2.")
    assert client.eval("#!lua flags=allow-cross-slot-keys\n" + script, 1, key, near) == 0


def test_a_slot_migrated_away_unsubscribes_the_old_owners_subscribers(cluster: RedisCluster) -> None:
    room = tag()
    name = channel(room)
    source = cluster.primary_for(name)
    [replica] = cluster.replicas_of(source)
    target = other_primary(cluster, source)
    slot = cluster.slot(name)
    cluster.client(source).set(f"ngw:{room}:h", "v")  # a key in the slot: MIGRATE has work to do
    subscribers = {"primary": subscribed(cluster, source, name), "replica": subscribed(cluster, replica, name)}
    publisher = cluster.client(source)
    gone_at: dict[str, str] = {}

    def check(step: str) -> None:
        if not step.startswith("node "):
            # migration under way: the channel is still the old owner's, no ASK, no sunsubscribe
            assert publisher.execute_command("SPUBLISH", name, step) == 1, step
            for who, pubsub in subscribers.items():
                message = next_message(pubsub)
                assert message is not None, (who, step)
                assert (message["type"], message["data"]) == ("smessage", step.encode()), (who, step)
            return
        for who, pubsub in subscribers.items():
            if who not in gone_at and (message := next_message(pubsub, 0.5)) is not None:
                assert (message["type"], message["channel"], message["data"]) == ("sunsubscribe", name.encode(), 0)
                gone_at[who] = step

    try:
        cluster.migrate_slot(slot, target, on_step=check)
        # SETSLOT NODE on the old owner itself unsubscribes its clients before it answers
        assert "primary" in gone_at
        assert gone_at["primary"] in {f"node {target}", f"node {source}"}
        if "replica" not in gone_at:  # the replica learns by gossip
            message = next_message(subscribers["replica"])
            assert message is not None
            assert (message["type"], message["data"]) == ("sunsubscribe", 0)
        with pytest.raises(redis.exceptions.MovedError) as moved:
            publisher.execute_command("SPUBLISH", name, "too late")
        assert str(moved.value) == f"{slot} 127.0.0.1:{target}"
        with pytest.raises(redis.exceptions.MovedError):
            cluster.client(source).execute_command("SSUBSCRIBE", name)
        again = subscribed(cluster, target, name)
        try:
            assert cluster.client(target).execute_command("SPUBLISH", name, "on the new owner") == 1
            message = next_message(again)
            assert message is not None
            assert message["data"] == b"on the new owner"
        finally:
            again.close()
        for pubsub in subscribers.values():
            assert next_message(pubsub, 0.2) is None  # nothing after the sunsubscribe
    finally:
        for pubsub in subscribers.values():
            pubsub.close()


# -- failures --------------------------------------------------------------------------------


def test_a_killed_primary_is_replaced_by_its_replica_then_stop_leaves_nothing() -> None:
    cluster = RedisCluster()
    with cluster:
        room = tag()
        key = f"ngw:{room}:h"
        old = cluster.primary_for(key)
        [replica] = cluster.replicas_of(old)
        old_slots = next(n.slots for n in cluster.nodes() if n.port == old)
        client = cluster.client(old)
        client.set(key, "replicated")
        assert client.execute_command("WAIT", 1, 5000) == 1  # the replica has it before the kill
        old_pid = cluster.pids()[old]
        cluster.kill(old)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
        assert old not in cluster.running()

        new = cluster.wait_failover(old)
        assert new == replica
        for via in cluster.running():
            serving = {n.port: n for n in cluster.nodes(via=via) if n.role == "primary" and not n.failed}
            assert serving[new].slots == old_slots
            assert "cluster_state:ok" in cluster.client(via, decode_responses=True).execute_command("CLUSTER", "INFO")
        assert cluster.primary_for(key) == new
        assert cluster.client(new).get(key) == b"replicated"
        assert cluster.client(new).set(key, "after the failover")

        cluster.restart(old)  # the same node id back, now a replica of the promoted one
        assert cluster.replicas_of(new) == [old]
        pids = cluster.pids()
        ports = cluster.running()
        assert len(ports) == 6
    cluster.stop()  # again: idempotent
    assert cluster.running() == []
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    assert not cluster.dir.exists()


def test_a_one_shard_cluster_is_made_by_hand() -> None:
    """redis-cli --cluster create wants 3 primaries; one shard (a single Redis seen as a cluster)
    is assigned its slots with CLUSTER ADDSLOTSRANGE."""
    with RedisCluster(primaries=1, replicas=1) as cluster:
        [primary] = [n for n in cluster.nodes() if n.role == "primary"]
        assert primary.slots == ((0, SLOTS - 1),)
        assert cluster.replicas_of(primary.port) == [p for p in cluster.running() if p != primary.port]
        assert cluster.primary_for(channel(tag())) == primary.port


def test_a_node_that_cannot_start_fails_with_its_output_and_leaves_nothing() -> None:
    cluster = RedisCluster(extra=["--no-such-option", "yes"])
    with pytest.raises(RuntimeError) as failed:
        cluster.start(timeout=10)
    assert "exited with" in str(failed.value)
    assert "no-such-option" in str(failed.value)  # redis-server's own words, from its stderr
    assert cluster.running() == []
    assert not cluster.dir.exists()


def test_a_wait_that_times_out_says_what_it_saw_and_shows_the_logs(cluster: RedisCluster) -> None:
    owner = cluster.primary_for(channel(tag()))  # alive: no replica will take over
    with pytest.raises(TimeoutError) as timed_out:
        cluster.wait_failover(owner, timeout=0.3)
    message = str(timed_out.value)
    assert f"a replica of :{owner}" in message
    assert "last seen:" in message
    assert f"-- redis-{owner}.log (running):" in message
