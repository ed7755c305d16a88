"""publisher.cluster against a real Redis Cluster (tests/support/redis_cluster.py, 3 primaries +
3 replicas): routing and order, the spread over the primaries, MOVED after a migration, ASK
during one, NOSCRIPT, a primary killed and failed over, and the URL and node checks against a
cluster node and a standalone redis-server.

Most tests share one cluster and keys of their own (a uuid in each); the one that kills a
primary starts its own. The scripts are test scripts (INCR of KEYS[1]), not the bus's.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from publisher.cluster import (
    AsyncClusterTransport,
    ClusterModeError,
    NodeAddress,
    SyncClusterTransport,
    async_expect_standalone,
    async_is_cluster_node,
    expect_standalone,
    is_cluster_node,
    key_slot,
    parse_cluster_url,
)
from publisher.commands import Call
from publisher.errors import PublishError
from publisher.scripts import Script
from tests.support.ports import free_port
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def _script(name: str, source: bytes) -> Script:
    return Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


INCR = _script("test_incr.lua", b"return redis.call('INCR', KEYS[1])")
INCR_TWO = _script("test_incr_two.lua", b"return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")
SEVEN = _script("test_seven.lua", b"return 7")  # no keys: any node


def incr(key: str) -> Call:
    return Call.of(INCR, 1, key)


def fresh_keys(count: int) -> list[str]:
    run = uuid.uuid4().hex[:10]
    return [f"ngw-test:{run}:{i}" for i in range(count)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture
def transport(cluster: RedisCluster) -> Iterator[SyncClusterTransport]:
    made = SyncClusterTransport(parse_cluster_url(cluster.url()), retries=3)
    try:
        yield made
    finally:
        made.close()


def script_calls(cluster: RedisCluster, ports: list[int]) -> dict[int, int]:
    """EVAL and EVALSHA calls per node since the last reset."""
    out = {}
    for port in ports:
        stats = cluster.commandstats(port)
        out[port] = stats.get("eval", 0) + stats.get("evalsha", 0)
    return out


def test_calls_to_many_slots_come_back_in_call_order(
        cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    keys = fresh_keys(300)
    assert len({key_slot(k) for k in keys}) > 250
    assert transport.run([incr(k) for k in keys]) == [1] * 300
    # the same key several times in one batch: run in order, wherever it lives
    mixed = [incr(keys[0]), incr(keys[1]), incr(keys[0]), incr(keys[2]), incr(keys[0])]
    assert transport.run(mixed) == [2, 2, 3, 2, 4]
    for key in keys[:20]:
        node = cluster.client(cluster.primary_for(key))
        try:
            assert int(node.get(key) or 0) == (4 if key == keys[0] else 2 if key in keys[1:3] else 1)
        finally:
            node.close()


def test_calls_spread_over_the_three_primaries_one_map_fetch(
        cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    keys = fresh_keys(300)
    primaries = cluster.primary_ports()
    assert len(primaries) == 3
    expected = {port: 0 for port in primaries}
    for key in keys:
        expected[cluster.owner(key_slot(key))] += 1
    cluster.reset_stats()
    transport.run([incr(k) for k in keys])
    transport.run([incr(k) for k in keys])
    assert script_calls(cluster, primaries) == {port: 2 * n for port, n in expected.items()}
    assert all(n > 50 for n in expected.values())
    # the slot map was asked once, of one node; replicas got no call
    asked = sum(cluster.commandstats(port).get("cluster|slots", 0) for port in cluster.running())
    assert asked == 1
    replicas = [p for p in cluster.running() if p not in primaries]
    assert sum(script_calls(cluster, replicas).values()) == 0


async def test_the_async_transport_sends_to_the_primaries_and_keeps_order(cluster: RedisCluster) -> None:
    """In the test's event loop, where a blocking call fails the test (tests/conftest.py): the
    harness (sync) is asked from a thread."""
    keys = fresh_keys(200)
    primaries = await asyncio.to_thread(cluster.primary_ports)
    await asyncio.to_thread(cluster.reset_stats)
    made = AsyncClusterTransport(parse_cluster_url(cluster.url()))

    async def ping(node: NodeAddress) -> bool:
        client = redis.asyncio.Redis(**node.client_kwargs())
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    try:
        assert await made.run([incr(k) for k in keys]) == [1] * 200
        assert await made.run([incr(keys[5]), incr(keys[6]), incr(keys[5]), Call.of(SEVEN, 0)]) == [2, 2, 3, 7]
        assert await made.run([incr(keys[7])]) == [2]
        pinged = await made.for_each_primary(ping)
    finally:
        await made.close()
    assert sorted(node.port for node in pinged) == sorted(primaries)
    assert all(pinged.values())
    calls = await asyncio.to_thread(script_calls, cluster, primaries)
    assert all(n > 0 for n in calls.values())


def test_a_call_without_keys_goes_to_some_primary(transport: SyncClusterTransport) -> None:
    assert transport.run([Call.of(SEVEN, 0), Call.of(SEVEN, 0)]) == [7, 7]


def test_moved_after_a_migration_is_followed(cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    key, neighbour = fresh_keys(2)
    assert transport.run([incr(key), incr(neighbour)]) == [1, 1]
    slot = key_slot(key)
    source = cluster.owner(slot)
    target = next(p for p in cluster.primary_ports() if p != source)
    cluster.migrate_slot(slot, target)
    cluster.reset_stats()
    assert transport.run([incr(key), incr(neighbour), incr(key)]) == [2, 2, 3]
    assert cluster.commandstats(target).get("eval", 0) + cluster.commandstats(target).get("evalsha", 0) >= 2
    assert transport.topology.node_for_slot(slot) == NodeAddress("127.0.0.1", target)
    # followed for good: the next run goes straight to the new owner
    cluster.reset_stats()
    assert transport.run([incr(key)]) == [4]
    assert sum(cluster.commandstats(port).get("cluster|slots", 0) for port in cluster.running()) == 0


def test_ask_during_a_migration_is_followed_without_changing_the_map(
        cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    tag = uuid.uuid4().hex[:10]
    staying, newcomer = f"{{{tag}}}:staying", f"{{{tag}}}:newcomer"
    slot = key_slot(staying)
    assert transport.run([incr(staying)]) == [1]
    source = cluster.owner(slot)
    target = next(p for p in cluster.primary_ports() if p != source)
    seen: list[Any] = []

    def mid_migration(step: str) -> None:
        if step != "migrating":
            return
        cluster.reset_stats([target])
        # the source still has `staying`; `newcomer` is nowhere: ASK to the target
        seen.append(transport.run([incr(newcomer), incr(staying), incr(newcomer)]))
        seen.append(cluster.commandstats(target).get("asking", 0))
        seen.append(transport.topology.node_for_slot(slot))

    cluster.migrate_slot(slot, target, on_step=mid_migration)
    assert seen == [[1, 2, 2], 2, NodeAddress("127.0.0.1", source)]
    assert transport.run([incr(staying), incr(newcomer)]) == [3, 3]


def test_scripts_flushed_on_every_node_are_sent_again(
        cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    keys = fresh_keys(60)
    transport.run([incr(k) for k in keys])
    for port in cluster.primary_ports():
        node = cluster.client(port)
        try:
            node.script_flush()
        finally:
            node.close()
    cluster.reset_stats()
    assert transport.run([incr(k) for k in keys]) == [2] * 60
    stats = [cluster.commandstats(port) for port in cluster.primary_ports()]
    assert sum(s.get("evalsha", 0) for s in stats) == 60  # each answered NOSCRIPT once...
    assert sum(s.get("eval", 0) for s in stats) == 60  # ...and ran by EVAL


def test_refusals_are_raised_with_the_call_and_node(
        cluster: RedisCluster, transport: SyncClusterTransport) -> None:
    one, two = fresh_keys(2)
    other = next(k for k in fresh_keys(50) if key_slot(k) != key_slot(one))
    with pytest.raises(PublishError, match=r"refused call 2 of 2: .*(CROSSSLOT|hash to the same slot)"):
        transport.run([incr(two), Call.of(INCR_TWO, 2, one, other)])
    assert transport.run([incr(two)]) == [2]  # the first call of the refused batch ran


def test_a_dead_seed_is_passed_over(cluster: RedisCluster) -> None:
    dead = free_port()
    url = f"redis+cluster://127.0.0.1:{dead},127.0.0.1:{cluster.running()[0]}"
    made = SyncClusterTransport(parse_cluster_url(url), retries=0)
    try:
        assert made.run([incr(k) for k in fresh_keys(10)]) == [1] * 10
        assert len(made.topology.primaries()) == 3
    finally:
        made.close()


def test_is_cluster_node_tells_a_cluster_node_from_a_standalone_redis(
        cluster: RedisCluster, redis_server: RedisServer) -> None:
    node, standalone = cluster.client(cluster.primary_ports()[0]), redis_server.client()
    try:
        assert is_cluster_node(node) is True
        assert is_cluster_node(standalone) is False
        expect_standalone(standalone, redis_server.url)
        url = f"redis://user:hunter2@127.0.0.1:{cluster.primary_ports()[0]}/0"
        with pytest.raises(ClusterModeError) as info:
            expect_standalone(node, url)
        message = str(info.value)
        assert f"redis+cluster://user:***@127.0.0.1:{cluster.primary_ports()[0]}" in message
        assert "hunter2" not in message
    finally:
        node.close()
        standalone.close()

    async def both() -> tuple[bool, bool]:
        a = redis.asyncio.Redis(port=cluster.primary_ports()[0])
        b = redis.asyncio.Redis(port=redis_server.port)
        try:
            await async_expect_standalone(b, redis_server.url)
            with pytest.raises(ClusterModeError, match=r"redis\+cluster://"):
                await async_expect_standalone(a, f"redis://127.0.0.1:{cluster.primary_ports()[0]}/0")
            return await async_is_cluster_node(a), await async_is_cluster_node(b)
        finally:
            await a.aclose()
            await b.aclose()

    assert asyncio.run(both()) == (True, False)


def test_a_cluster_url_at_a_standalone_redis_says_so(redis_server: RedisServer) -> None:
    url = f"redis+cluster://app:hunter2@127.0.0.1:{redis_server.port}"
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "app", "on", ">hunter2", "~*", "+@all")
    client.close()
    made = SyncClusterTransport(parse_cluster_url(url), retries=3)
    with pytest.raises(ClusterModeError) as info:
        made.run([incr("k")])
    made.close()
    message = str(info.value)
    assert "without cluster support" in message
    assert f"write redis://127.0.0.1:{redis_server.port}/0" in message
    assert "hunter2" not in message

    async def run_async() -> None:
        made = AsyncClusterTransport(parse_cluster_url(url))
        try:
            await made.run([incr("k")])
        finally:
            await made.close()

    with pytest.raises(ClusterModeError, match="without cluster support"):
        asyncio.run(run_async())


def test_a_killed_primary_fails_the_budget_then_is_followed_after_the_failover() -> None:
    """retries=1: a batch sent while the primary is dead (its replica not yet promoted: that
    takes the node timeout, 2 s here) raises PublishError after 2 attempts; the same transports
    succeed once the replica is promoted, within that budget, the sync and the async one."""
    with RedisCluster() as own:
        keys = fresh_keys(90)
        sync = SyncClusterTransport(parse_cluster_url(own.url()), retries=1)
        asyncs = AsyncClusterTransport(parse_cluster_url(own.url()), retries=1)
        loop = asyncio.new_event_loop()
        try:
            assert sync.run([incr(k) for k in keys]) == [1] * 90
            assert loop.run_until_complete(asyncs.run([incr(k) for k in keys])) == [2] * 90
            victim = own.primary_ports()[0]
            on_victim = [k for k in keys if own.owner(key_slot(k)) == victim]
            assert on_victim
            primary = own.client(victim)
            assert primary.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]  # replica in sync
            primary.close()

            own.kill(victim)
            unreachable = rf"could not reach Redis at 127\.0\.0\.1:{victim} .*after 2 attempt"
            with pytest.raises(PublishError, match=unreachable):
                sync.run([incr(k) for k in keys])
            with pytest.raises(PublishError, match=unreachable):
                loop.run_until_complete(asyncs.run([incr(k) for k in keys]))

            promoted = own.wait_failover(victim)
            # the other primaries ran their calls of each failed batch (at least once): 2 more
            expected = [2 + 2 * (k not in on_victim) + 1 for k in keys]
            assert sync.run([incr(k) for k in keys]) == expected
            assert loop.run_until_complete(asyncs.run([incr(k) for k in keys])) == [n + 1 for n in expected]
            assert NodeAddress("127.0.0.1", promoted) in sync.topology.primaries()
            assert NodeAddress("127.0.0.1", victim) not in asyncs.topology.primaries()
        finally:
            sync.close()
            loop.run_until_complete(asyncs.close())
            loop.close()
