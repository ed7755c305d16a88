"""One shard of a Redis Cluster down, the others up (tests/support/redis_cluster.py, 3
primaries, no replica, one killed): an emit on a live shard that shares a write with an emit
on the dead one is published, and its future says so; only the dead shard's emits fail.

Why it matters: the sync sender and the async one put many callers' emits into one write, a
call per slot. Failing the whole write for one shard's trouble would report as failed events
that other shards delivered, and a producer retrying them (a Celery task, as docs/producers.md
advises) would publish them twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from publisher import AsyncPublisher, Publisher, PublishError
from publisher.cluster import key_slot
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.integration

SLOW = 30.0  # a linger no test waits out: the emits below share one write


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[RedisCluster, dict[int, str]]]:
    """The cluster with one primary killed, and a room name per live and dead primary."""
    with RedisCluster(primaries=3, replicas=0, node_timeout_ms=60_000) as started:
        rooms: dict[int, str] = {}
        while len(rooms) < 3:
            room = f"quiz:{uuid.uuid4().hex[:8]}"
            rooms.setdefault(started.owner(key_slot(room)), room)
        dead = started.primary_ports()[0]
        started.kill(dead)
        yield started, {port: room for port, room in rooms.items()} | {-1: rooms[dead]}


def stream(cluster: RedisCluster, port: int, room: str) -> list[str]:
    with cluster.client(port) as client:
        return [entry_id.decode() for entry_id, _ in client.xrange(f"ngw:{{{room}}}:h")]


def live_rooms(cluster: RedisCluster, rooms: dict[int, str]) -> dict[int, str]:
    return {port: room for port, room in rooms.items() if port in cluster.running()}


def test_the_sync_publisher_fails_only_the_dead_shards_emits(
        cluster: tuple[RedisCluster, dict[int, str]]) -> None:
    nodes, rooms = cluster
    live = live_rooms(nodes, rooms)
    with Publisher(nodes.url(nodes.running()), linger=SLOW, retries=0) as pub:
        dead_emit = pub.emit("x", "dead", room=rooms[-1])
        live_emits = {port: pub.emit("x", "live", room=room) for port, room in live.items()}
        with pytest.raises(PublishError):
            pub.flush(30)
        assert isinstance(dead_emit.exception(0), PublishError)
        for port, future in live_emits.items():
            assert future.exception(0) is None, f"published on {port}, yet reported failed"
            assert stream(nodes, port, live[port]) == [future.result(0)]


async def test_the_async_publisher_fails_only_the_dead_shards_emits(
        cluster: tuple[RedisCluster, dict[int, str]]) -> None:
    nodes, rooms = cluster
    live = await asyncio.to_thread(live_rooms, nodes, rooms)
    async with AsyncPublisher(nodes.url(nodes.running()), retries=0) as pub:
        await pub.emit("x", "warm", room=next(iter(live.values())))  # the slot map is known
        outcomes = await asyncio.gather(
            pub.emit("x", "dead", room=rooms[-1]),
            *(pub.emit("x", "live", room=room) for room in live.values()),
            return_exceptions=True)
    assert isinstance(outcomes[0], PublishError)
    for (port, room), outcome in zip(live.items(), outcomes[1:], strict=True):
        assert isinstance(outcome, str), f"published on {port}, yet reported {outcome!r}"
        assert (await asyncio.to_thread(stream, nodes, port, room))[-1] == outcome
