"""gateway.bus.shards against real Redis: a 3+3 cluster (tests/support/redis_cluster.py) and a
single redis-server.

What is proven, with a sink that records every call and message:
- one subscriber connection per shard that holds our channels (CLIENT LIST: one pub/sub
  connection named ngw-sub:<replica> per primary, `ssub` = its channels and our probe), and
  SPUBLISHed messages arrive;
- a slot migrated while it is published to: lost, restoring, restored for exactly the
  channels of that slot; they receive again from the new owner; other channels never lost;
- a MOVED reply to an SSUBSCRIBE (our slot map stale): the channel is subscribed on its owner;
- a primary SIGKILLed: its channels restored on the promoted replica, readiness false then
  true, the other shards untouched;
- a primary added and given a slot: its channels move there;
- a shard whose probe does not come back (CLIENT PAUSE WRITE) is reconnected alone;
- unsubscribe, close (no connection left), a single Redis (one shard; restarted: restored),
  a handler that raises costs one message, a plain URL at a cluster node is never ready.

No timing assertion: every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from gateway.bus.endpoint import parse_endpoint
from gateway.bus.shards import ShardedChannels
from gateway.bus.shards import tuning as shards_module  # the delays, read at each use
from publisher.cluster import key_slot, parse_cluster_url
from publisher.envelope import EVERYONE, BusNames
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

NAMES = BusNames()
BROADCAST = NAMES.room_channel(EVERYONE).encode()


def channel(room: str) -> bytes:
    return NAMES.room_channel(room).encode()


class Sink:
    """Records what the channels tell it, and checks the order per channel as it goes:
    lost only when live or restoring, restoring only when lost, restored only when restoring."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.messages: list[bytes] = []
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []
        self.state: dict[bytes, str] = {}
        self.errors: list[str] = []
        self.batches = 0
        self.fail_on = fail_on

    def on_message(self, raw: bytes) -> None:
        if self.fail_on is not None and raw.startswith(self.fail_on):
            raise RuntimeError(f"handler failed on {raw!r}")
        self.messages.append(raw)

    def begin_batch(self) -> None:
        self.batches += 1

    def end_batch(self) -> None:
        return None

    def _step(self, kind: str, channels: list[bytes], allowed: set[str], to: str) -> None:
        assert isinstance(channels, list)
        self.calls.append((kind, tuple(channels)))
        for ch in channels:
            now = self.state.get(ch, "live")
            if now not in allowed:
                self.errors.append(f"{kind} of {ch!r} while {now}")
            self.state[ch] = to

    def channels_lost(self, channels: list[bytes]) -> None:
        self._step("lost", channels, {"live", "restoring"}, "lost")

    def channels_restoring(self, channels: list[bytes]) -> None:
        self._step("restoring", channels, {"lost"}, "restoring")

    async def channels_restored(self, channels: list[bytes]) -> None:
        await asyncio.sleep(0)
        self._step("restored", channels, {"restoring"}, "live")

    def told(self, kind: str) -> set[bytes]:
        return {ch for what, chans in self.calls if what == kind for ch in chans}

    def settled(self, channels: set[bytes]) -> bool:
        return all(self.state.get(ch, "live") == "live" for ch in channels)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def ours(client: redis.Redis, replica: str) -> list[dict[str, Any]]:
    """Our pub/sub connections on one node, as CLIENT LIST says."""
    return [c for c in client.client_list() if c.get("name") == f"ngw-sub:{replica}"]


def node_conns(cluster: RedisCluster, port: int, replica: str) -> list[dict[str, Any]]:
    client = cluster.client(port, decode_responses=True)
    try:
        return ours(client, replica)
    finally:
        client.close()


async def until_held(cluster: RedisCluster, port: int, replica: str, channels: int) -> None:
    """Our one connection to `port` holds `channels` and our probe. The probe (the shard's
    self-check channel) is subscribed on its own schedule, so it may land after the rooms."""
    deadline = time.monotonic() + 10
    while True:
        conns = await asyncio.to_thread(node_conns, cluster, port, replica)
        if len(conns) == 1 and int(conns[0]["ssub"]) == channels + 1:
            return
        assert time.monotonic() < deadline, f":{port}: {conns} instead of one connection holding {channels} + probe"
        await asyncio.sleep(0.05)


def spublish(cluster: RedisCluster, ch: bytes, message: bytes, port: int | None = None) -> int:
    """SPUBLISH on the primary that owns the channel's slot now (or on `port`); receivers."""
    client = cluster.client(port if port is not None else cluster.owner(key_slot(ch)))
    try:
        return int(client.execute_command("SPUBLISH", ch, message))  # type: ignore[no-untyped-call]
    finally:
        client.close()


def rooms(run: str, count: int, tag: str = "r") -> list[bytes]:
    return [channel(f"room:{run}:{tag}{i}") for i in range(count)]


def same_slot(run: str, slot: int, avoid: set[bytes]) -> bytes:
    for i in itertools.count():
        ch = channel(f"room:{run}:twin{i}")
        if key_slot(ch) == slot and ch not in avoid:
            return ch
    raise AssertionError("unreachable")


class Readiness:
    """Samples `connected` in the loop, to see it go down and up again."""

    def __init__(self, channels: ShardedChannels) -> None:
        self.seen: list[bool] = []
        self._channels = channels
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            now = self._channels.connected
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.seen[-1] != self._channels.connected:
            self.seen.append(self._channels.connected)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture
def replica() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def started(where: Any, sink: Sink, counted: list[str], replica: str) -> ShardedChannels:
    made = ShardedChannels(where, sink, counted.append, replica)
    made.start()
    await until(lambda: made.connected, 30, "the channels are ready")
    return made


# -- a single Redis ----------------------------------------------------------------------------


async def test_a_single_redis_is_one_shard_and_follows_a_restart(redis_server: RedisServer, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    channels = await started(parse_endpoint(redis_server.url), sink, counted, replica)
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    try:
        wanted = rooms(replica, 5)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        assert list(channels.shards()) == [f"127.0.0.1:{redis_server.port}"]
        conns = [c for c in await client.client_list() if c.get("name") == f"ngw-sub:{replica}"]
        assert len(conns) == 1
        assert int(conns[0]["ssub"]) == len(wanted) + 2  # and the broadcast channel, and our probe
        for i, ch in enumerate(wanted):
            assert await client.execute_command("SPUBLISH", ch, f"m{i}") == 1  # type: ignore[no-untyped-call]
        await until(lambda: len(sink.messages) == len(wanted), 10, "every message")
        assert sorted(sink.messages) == [f"m{i}".encode() for i in range(len(wanted))]
        assert sink.calls == []

        await asyncio.to_thread(redis_server.restart)
        every = {*wanted, BROADCAST}
        await until(lambda: sink.told("restored") >= every and channels.connected, 30,
                    "restored after the restart")
        assert sink.told("lost") == every
        assert sink.told("restoring") == every
        assert not sink.errors, sink.errors
        assert "reconnect" in counted
        await client.aclose()
        client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
        assert await client.execute_command("SPUBLISH", wanted[0], "after") == 1  # type: ignore[no-untyped-call]
        await until(lambda: b"after" in sink.messages, 10, "a message after the restart")
    finally:
        await channels.close()
        await client.aclose()


async def test_a_handler_that_raises_costs_one_message(redis_server: RedisServer, replica: str) -> None:
    sink, counted = Sink(fail_on=b"boom"), list[str]()
    channels = await started(parse_endpoint(redis_server.url), sink, counted, replica)
    client = redis.asyncio.Redis(port=redis_server.port)
    try:
        [ch] = rooms(replica, 1)
        assert await channels.subscribe(ch)
        async with client.pipeline(transaction=False) as pipe:  # one read may bring them all
            for message in (b"one", b"boom-1", b"two", b"boom-2", b"three"):
                pipe.execute_command("SPUBLISH", ch, message)
            await pipe.execute()
        await until(lambda: len(sink.messages) == 3, 10, "the three good messages")
        assert sink.messages == [b"one", b"two", b"three"]
        assert counted.count("message_failed") == 2
        assert "reconnect" not in counted
        assert channels.connected
        assert sink.calls == []
    finally:
        await channels.close()
        await client.aclose()


async def test_a_plain_url_at_a_cluster_node_is_never_ready(cluster: RedisCluster, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    port = (await asyncio.to_thread(cluster.primary_ports))[0]
    channels = ShardedChannels(parse_endpoint(f"redis://127.0.0.1:{port}/0"), sink, counted.append, replica)
    channels.start()
    try:
        await until(lambda: "cluster_mode" in counted, 10, "the cluster node refused")
        await asyncio.sleep(0.5)
        assert not channels.connected
        assert not await channels.subscribe(channel(f"room:{replica}:x"))
    finally:
        await channels.close()


# -- a cluster ---------------------------------------------------------------------------------


async def test_channels_spread_over_one_connection_per_shard(cluster: RedisCluster, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    try:
        wanted = rooms(replica, 30)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        primaries = await asyncio.to_thread(cluster.primary_ports)
        owners = await asyncio.to_thread(lambda: {ch: cluster.owner(key_slot(ch)) for ch in [*wanted, BROADCAST]})
        assert set(owners.values()) <= set(primaries)
        assert {owners[ch] for ch in wanted} == set(primaries), "30 rooms over 3 shards"
        assert channels.shards() == {f"127.0.0.1:{port}": True for port in primaries}
        for port in primaries:
            [conn] = await asyncio.to_thread(node_conns, cluster, port, replica)
            assert "P" in conn["flags"]
            held = sum(1 for ch, owner in owners.items() if owner == port)
            assert int(conn["ssub"]) == held + 1, f":{port} holds {held} channels and our probe"
            assert int(conn["sub"]) == int(conn["psub"]) == 0
        for port in await asyncio.to_thread(lambda: [p for p in cluster.running() if p not in primaries]):
            assert await asyncio.to_thread(node_conns, cluster, port, replica) == [], "nothing on replicas"
        for i, ch in enumerate(wanted):
            assert await asyncio.to_thread(spublish, cluster, ch, b"m%d" % i) == 1
        assert await asyncio.to_thread(spublish, cluster, BROADCAST, b"everyone") >= 1
        await until(lambda: len(sink.messages) == len(wanted) + 1, 10, "every message")
        assert sorted(sink.messages) == sorted([b"m%d" % i for i in range(len(wanted))] + [b"everyone"])
        assert sink.calls == []
        assert not any(c in counted for c in ("reconnect", "selfcheck_repair", "moved", "slot_moved"))
    finally:
        await channels.close()


async def test_a_slot_migrated_mid_stream_moves_exactly_its_channels(cluster: RedisCluster, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    stop = threading.Event()
    pump: threading.Thread | None = None
    try:
        others = rooms(replica, 20)
        busy = channel(f"room:{replica}:busy")
        slot = key_slot(busy)
        others = [ch for ch in others if key_slot(ch) != slot]
        twin = same_slot(replica, slot, set(others))
        moving = {busy, twin}
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in [*others, busy, twin])))
        source = await asyncio.to_thread(cluster.owner, slot)
        target = next(p for p in await asyncio.to_thread(cluster.primary_ports) if p != source)
        on_source = [ch for ch in others if await asyncio.to_thread(cluster.owner, key_slot(ch)) == source]
        assert on_source, "some other channel shares the source's connection"

        published: list[int] = []

        def publish_all_along() -> None:
            client = cluster.cluster_client()
            try:
                for i in itertools.count():
                    if stop.is_set():
                        return
                    with contextlib.suppress(redis.RedisError):
                        client.spublish(busy, b"busy %d" % i)
                        published.append(i)
                    time.sleep(0.005)
            finally:
                client.close()

        pump = threading.Thread(target=publish_all_along, daemon=True)
        pump.start()
        await until(lambda: len(sink.messages) > 20, 10, "the busy room's messages flow")
        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        await until(lambda: sink.told("restored") >= moving and sink.settled(moving) and channels.connected, 30,
                    "the slot's channels restored on the new owner")
        assert sink.told("lost") == moving
        assert sink.told("restoring") == moving
        assert sink.told("restored") == moving
        assert not sink.errors, sink.errors
        assert "slot_moved" in counted
        # live again from the new owner, both of them
        count_before = len(sink.messages)
        await until(lambda: len(sink.messages) > count_before + 20, 10, "the busy room's messages flow again")
        assert await asyncio.to_thread(spublish, cluster, twin, b"twin after", target) == 1
        await until(lambda: b"twin after" in sink.messages, 10, "the twin's message from the new owner")
        [conn] = await asyncio.to_thread(node_conns, cluster, target, replica)
        assert int(conn["ssub"]) >= 2
        # the other channels, the source's included, were never touched, and still receive
        for ch in others:
            assert await asyncio.to_thread(spublish, cluster, ch, b"other " + ch) == 1
        await until(lambda: all(b"other " + ch in sink.messages for ch in others), 10, "the others' messages")
        assert channels.shards() == {f"127.0.0.1:{p}": True for p in await asyncio.to_thread(cluster.primary_ports)}
    finally:
        stop.set()
        if pump is not None:
            await asyncio.to_thread(pump.join, 10)
        await channels.close()


async def test_a_moved_reply_sends_the_channel_to_its_owner(
        cluster: RedisCluster, replica: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our slot map is stale (no periodic refresh in this test, and no channel of ours in the
    slot, so no push): the SSUBSCRIBE goes to the old owner, which answers MOVED."""
    monkeypatch.setattr(shards_module, "REFRESH_EVERY", 3600.0)
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    try:
        ch = channel(f"room:{replica}:moved")
        slot = key_slot(ch)
        source = await asyncio.to_thread(cluster.owner, slot)
        target = next(p for p in await asyncio.to_thread(cluster.primary_ports) if p != source)
        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        assert await channels.subscribe(ch)
        assert "moved" in counted
        assert sink.calls == [], "a first subscription is neither lost nor restored"
        assert await asyncio.to_thread(spublish, cluster, ch, b"there", target) == 1
        await until(lambda: b"there" in sink.messages, 10, "the message from the slot's owner")
        assert channels.connected
    finally:
        await channels.close()


async def test_a_shard_whose_probe_does_not_come_back_is_reconnected_alone(
        cluster: RedisCluster, replica: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIENT PAUSE WRITE on one primary: PING is answered, SPUBLISH (our probe) is not."""
    monkeypatch.setattr(shards_module, "PING_EVERY", 0.2)
    monkeypatch.setattr(shards_module, "PROBE_EVERY", 1)
    monkeypatch.setattr(shards_module, "REPLY_TIMEOUT", 0.5)
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    try:
        wanted = rooms(replica, 30)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        primaries = await asyncio.to_thread(cluster.primary_ports)
        owners = await asyncio.to_thread(lambda: {ch: cluster.owner(key_slot(ch)) for ch in [*wanted, BROADCAST]})
        paused = owners[wanted[0]]
        before = {port: (await asyncio.to_thread(node_conns, cluster, port, replica))[0]["id"] for port in primaries}

        def pause() -> None:
            client = cluster.client(paused)
            try:
                client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")  # type: ignore[no-untyped-call]
            finally:
                client.close()

        await asyncio.to_thread(pause)
        await until(lambda: "selfcheck_repair" in counted, 10, "the probe failed")
        # a write to the paused node returns once the pause is over
        await asyncio.to_thread(spublish, cluster, wanted[0], b"barrier", paused)
        await until(lambda: channels.connected and sink.settled(set(owners)), 30, "ready again")
        after = {port: (await asyncio.to_thread(node_conns, cluster, port, replica))[0]["id"] for port in primaries}
        assert after[paused] != before[paused], "the deaf shard was reconnected"
        assert {p: after[p] for p in primaries if p != paused} == {p: before[p] for p in primaries if p != paused}
        on_paused = {ch for ch, owner in owners.items() if owner == paused}
        assert sink.told("lost") == on_paused
        assert sink.told("restored") == on_paused
        assert not sink.errors, sink.errors
        for ch in wanted:  # a probe sent during the pause may still fail: the shard comes back again
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(spublish, cluster, ch, b"again " + ch) != 1:
                assert time.monotonic() < deadline, f"{ch!r} subscribed again"
                await asyncio.sleep(0.05)
        await until(lambda: all(b"again " + ch in sink.messages for ch in wanted), 10, "every message")
    finally:
        await channels.close()


async def test_unsubscribe_then_close_leaves_no_subscription(cluster: RedisCluster, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    try:
        wanted = rooms(replica, 12)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        kept, dropped = wanted[:6], wanted[6:]
        for ch in dropped:
            channels.unsubscribe(ch)
        channels.unsubscribe(BROADCAST)  # always desired: ignored
        owners = await asyncio.to_thread(lambda: {ch: cluster.owner(key_slot(ch)) for ch in [*wanted, BROADCAST]})
        primaries = await asyncio.to_thread(cluster.primary_ports)

        async def counts_match() -> bool:
            for port in primaries:
                conns = await asyncio.to_thread(node_conns, cluster, port, replica)
                held = sum(1 for ch in [*kept, BROADCAST] if owners[ch] == port)
                if held and (len(conns) != 1 or int(conns[0]["ssub"]) != held + 1):
                    return False
                if not held and conns and int(conns[0]["ssub"]) > 1:
                    return False
            return True

        deadline = time.monotonic() + 10
        while not await counts_match():
            assert time.monotonic() < deadline, "CLIENT LIST shows the unsubscribed channels gone"
            await asyncio.sleep(0.05)
        for ch in dropped:
            assert await asyncio.to_thread(spublish, cluster, ch, b"nobody") == 0
        assert channels.connected
    finally:
        await channels.close()
    assert not channels.connected
    for port in await asyncio.to_thread(cluster.running):
        assert await asyncio.to_thread(node_conns, cluster, port, replica) == [], f"a connection left on :{port}"
    assert sink.calls == []


async def test_a_primary_added_and_given_a_slot_takes_its_channels(cluster: RedisCluster, replica: str) -> None:
    """Last of the module's cluster tests: it adds a fourth primary to the shared cluster."""
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(cluster.url()), sink, counted, replica)
    try:
        wanted = rooms(replica, 10)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        added = await asyncio.to_thread(cluster.add_primary)
        ch = wanted[0]
        slot = key_slot(ch)
        moving = {c for c in [*wanted, BROADCAST] if key_slot(c) == slot}
        await asyncio.to_thread(cluster.migrate_slot, slot, added)
        await until(lambda: sink.told("restored") >= moving and sink.settled(moving) and channels.connected, 30,
                    "the channel restored on the new primary")
        assert sink.told("lost") == moving
        assert f"127.0.0.1:{added}" in channels.shards()
        assert all(channels.shards().values())
        await until_held(cluster, added, replica, len(moving))
        assert await asyncio.to_thread(spublish, cluster, ch, b"on the new primary", added) == 1
        await until(lambda: b"on the new primary" in sink.messages, 10, "the message from the new primary")
        assert not sink.errors, sink.errors
    finally:
        await channels.close()


def test_a_killed_primary_is_followed_to_its_promoted_replica(replica: str) -> None:
    """A cluster of its own: a primary SIGKILLed, its replica promoted within seconds."""
    with RedisCluster() as own:
        asyncio.run(_killed_primary(own, replica))


async def _killed_primary(own: RedisCluster, replica: str) -> None:
    sink, counted = Sink(), list[str]()
    channels = await started(parse_cluster_url(own.url()), sink, counted, replica)
    readiness = Readiness(channels)
    try:
        wanted = rooms(replica, 30)
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        owners = await asyncio.to_thread(lambda: {ch: own.owner(key_slot(ch)) for ch in [*wanted, BROADCAST]})
        victim = owners[wanted[0]]
        on_victim = {ch for ch, port in owners.items() if port == victim}
        elsewhere = set(owners) - on_victim
        await asyncio.to_thread(own.kill, victim)
        await until(lambda: sink.told("lost") >= on_victim, 10, "the victim's channels lost")
        await until(lambda: not channels.connected, 10, "not ready while a shard is down")
        promoted = await asyncio.to_thread(own.wait_failover, victim)
        await until(lambda: sink.told("restored") >= on_victim and sink.settled(on_victim) and channels.connected,
                    30, "the victim's channels restored on the promoted replica")
        await readiness.stop()
        assert readiness.seen[0] is True
        assert False in readiness.seen, "not ready while the shard was down"
        assert readiness.seen[-1] is True
        assert sink.told("lost") == on_victim, "the other shards' channels were never lost"
        assert sink.told("restored") == on_victim
        assert not sink.errors, sink.errors
        assert f"127.0.0.1:{victim}" not in channels.shards()
        assert channels.shards()[f"127.0.0.1:{promoted}"] is True
        await until_held(own, promoted, replica, len(on_victim))
        for ch in [*on_victim, *elsewhere]:
            assert await asyncio.to_thread(spublish, own, ch, b"after " + ch) == 1
        await until(lambda: all(b"after " + ch in sink.messages for ch in owners), 10, "every message after")
    finally:
        await readiness.stop()
        await channels.close()
