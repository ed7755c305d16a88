"""gateway.bus.shards against fake Redis nodes in the test's own event loop: the paths a real
cluster cannot be made to take on demand (a MOVED answer while a channel is being restored, a
push between held replies, an answer after subscribe() gave up, an unsubscribe while the
SSUBSCRIBE is in flight). The real cluster is in tests/integration/test_bus_shards.py.

A `FakeNode` speaks just enough RESP2: AUTH, CLIENT, INFO, PING, SSUBSCRIBE, SUNSUBSCRIBE,
SPUBLISH, CLUSTER SLOTS (from a `FakeCluster`'s slot table, which may be left stale on purpose).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import pytest

from gateway.bus.endpoint import parse_endpoint
from gateway.bus.shards import ShardedChannels, selfcheck
from gateway.bus.shards import tuning as shards_module  # the delays, read at each use
from publisher.cluster import SLOTS, key_slot, parse_cluster_url
from publisher.envelope import EVERYONE, BusNames

NAMES = BusNames()
BROADCAST = NAMES.room_channel(EVERYONE).encode()


def channel(room: str) -> bytes:
    return NAMES.room_channel(room).encode()


@dataclass(frozen=True)
class Err:
    line: str


def enc(value: Any) -> bytes:
    if isinstance(value, Err):
        return b"-%s\r\n" % value.line.encode()
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(enc(v) for v in value)
    raise TypeError(value)


class FakeConn:
    def __init__(self, node: FakeNode, writer: asyncio.StreamWriter) -> None:
        self.node = node
        self.writer = writer
        self.subs: set[bytes] = set()
        self.name = b""
        self.held: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.node.hold and not data.startswith((b"*3\r\n$8\r\nsmessage",)):
            self.held.append(data)
        else:
            self.writer.write(data)

    def release(self) -> None:
        held, self.held = self.held, []
        self.writer.write(b"".join(held))


class FakeNode:
    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.cluster = cluster
        self.port = 0
        self.conns: list[FakeConn] = []
        self.refuse: dict[bytes, str] = {}  # channel -> the error line its SSUBSCRIBEs get
        self.hold = False  # replies kept until release()
        self.server: asyncio.Server | None = None

    async def start(self) -> FakeNode:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def drop(self) -> None:
        for conn in self.conns:
            conn.writer.close()
        self.conns.clear()

    def subscribers(self, ch: bytes) -> list[FakeConn]:
        return [c for c in self.conns if ch in c.subs]

    def push_out(self, ch: bytes) -> None:
        """As Redis does when the channel's slot leaves the node."""
        for conn in self.subscribers(ch):
            conn.subs.discard(ch)
            conn.writer.write(enc([b"sunsubscribe", ch, len(conn.subs)]))

    def publish(self, ch: bytes, message: bytes) -> int:
        subs = self.subscribers(ch)
        for conn in subs:
            conn.writer.write(enc([b"smessage", ch, message]))
        return len(subs)

    def release(self) -> None:
        self.hold = False
        for conn in self.conns:
            conn.release()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConn(self, writer)
        self.conns.append(conn)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self._run(conn, command)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if conn in self.conns:
                self.conns.remove(conn)
            writer.close()

    def _run(self, conn: FakeConn, command: list[bytes]) -> None:
        name = command[0].upper()
        if name in {b"AUTH", b"READONLY"}:
            conn.send(enc("OK"))
        elif name == b"HELLO":  # redis-py's clients speak RESP3: a map
            fields = [b"server", b"redis", b"version", b"7.0.15", b"proto", int(command[1]) if len(command) > 1 else 2]
            conn.send(b"%%%d\r\n" % (len(fields) // 2) + b"".join(enc(v) for v in fields))
        elif name == b"CLIENT":
            if command[1].upper() == b"SETNAME":
                conn.name = command[2]
            conn.send(enc("OK"))
        elif name == b"INFO":
            conn.send(enc(b"# Cluster\r\ncluster_enabled:%d\r\n" % (self.cluster is not None)))
        elif name == b"PING":
            conn.send(enc([b"pong", b""]) if conn.subs else enc("PONG"))
        elif name == b"SSUBSCRIBE":
            for ch in command[1:]:
                error = self.refuse.get(ch)
                if error is not None:
                    conn.send(enc(Err(error)))
                    continue
                conn.subs.add(ch)
                conn.send(enc([b"ssubscribe", ch, len(conn.subs)]))
        elif name == b"SUNSUBSCRIBE":
            for ch in command[1:]:
                conn.subs.discard(ch)
                conn.send(enc([b"sunsubscribe", ch, len(conn.subs)]))
        elif name == b"SPUBLISH":
            conn.send(enc(self.publish(command[1], command[2])))
        elif name == b"CLUSTER" and command[1].upper() == b"SLOTS" and self.cluster is not None:
            conn.send(enc(self.cluster.slots_reply()))
        else:
            conn.send(enc(Err(f"ERR unknown command '{name.decode()}'")))


class FakeCluster:
    """Fake nodes and the slot table CLUSTER SLOTS answers from (changed only when told)."""

    def __init__(self) -> None:
        self.nodes: list[FakeNode] = []
        self.table: list[FakeNode] = []

    async def start(self, count: int) -> FakeCluster:
        self.nodes = [await FakeNode(self).start() for _ in range(count)]
        share = SLOTS // count
        self.table = [self.nodes[min(slot // share, count - 1)] for slot in range(SLOTS)]
        return self

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def owner(self, ch: bytes) -> FakeNode:
        return self.table[key_slot(ch)]

    def slots_reply(self) -> list[Any]:
        out: list[Any] = []
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or self.table[slot] is not self.table[start]:
                out.append([start, slot - 1, [b"127.0.0.1", self.table[start].port, b"id%d" % start]])
                start = slot
        return out

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


class Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []

    def on_message(self, raw: bytes) -> None:
        self.messages.append(raw)

    def begin_batch(self) -> None:
        return None

    def end_batch(self) -> None:
        return None

    def channels_lost(self, channels: list[bytes]) -> None:
        self.calls.append(("lost", tuple(channels)))

    def channels_restoring(self, channels: list[bytes]) -> None:
        self.calls.append(("restoring", tuple(channels)))

    async def channels_restored(self, channels: list[bytes]) -> None:
        self.calls.append(("restored", tuple(channels)))

    def of(self, ch: bytes) -> list[str]:
        return [what for what, chans in self.calls if ch in chans]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "SUBSCRIBE_TIMEOUT", 0.3)
    monkeypatch.setattr(shards_module, "REFRESH_EVERY", 3600.0)


async def test_a_moved_answer_while_restoring_is_lost_again_then_restored_on_the_owner(fast: None) -> None:
    """The slot moved from A to B, but CLUSTER SLOTS still says A (stale on purpose): the push
    makes the channel lost, the refresh sends it back to A, which answers MOVED B; then B."""
    cluster = await FakeCluster().start(2)
    a, b = cluster.nodes
    ch = next(c for i in range(10_000) if cluster.owner(c := channel(f"room:{i}")) is a)
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_cluster_url(cluster.url()), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        assert await channels.subscribe(ch)
        assert a.subscribers(ch)
        a.refuse[ch] = f"MOVED {key_slot(ch)} 127.0.0.1:{b.port}"
        a.push_out(ch)
        await until(lambda: sink.of(ch)[-1:] == ["restored"] and channels.connected, "restored on B")
        assert sink.of(ch) == ["lost", "restoring", "lost", "restoring", "restored"]
        assert b.subscribers(ch)
        assert not a.subscribers(ch)
        assert counted.count("moved") == 1
        assert counted.count("slot_moved") == 1
        assert channels.shards() == {f"127.0.0.1:{a.port}": True, f"127.0.0.1:{b.port}": True}
        assert b.publish(ch, b"from b") == 1
        await until(lambda: b"from b" in sink.messages, "the message from B")
    finally:
        await channels.close()
        await cluster.stop()


async def test_replies_are_matched_to_their_commands_across_a_push(fast: None) -> None:
    """Replies held, then released after an unsolicited sunsubscribe: the error still goes to
    the channel whose SSUBSCRIBE it answers, the push to the channel it names."""
    node = await FakeNode().start()
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_endpoint(f"redis://127.0.0.1:{node.port}"), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        live = channel("room:live")
        assert await channels.subscribe(live)
        held = [channel(f"room:held{i}") for i in range(5)]
        node.refuse[held[3]] = "NOPERM this user has no permissions to access the channel"
        node.hold = True
        waiting = [asyncio.create_task(channels.subscribe(ch)) for ch in held]
        await until(lambda: sum(len(c.held) for c in node.conns) == 5, "five answers held")
        node.push_out(live)  # written before the held answers
        node.release()
        assert await asyncio.gather(*waiting) == [True, True, True, False, True]
        assert "subscribe_refused" in counted
        await until(lambda: sink.of(live)[-1:] == ["restored"], "the pushed-out channel subscribed again")
        for ch in held[:3] + held[4:]:
            assert sink.of(ch) == []
        assert sink.of(live) == ["lost", "restoring", "restored"]
        assert node.publish(live, b"again") == 1
        await until(lambda: b"again" in sink.messages, "live again")
    finally:
        await channels.close()
        await node.stop()


async def test_a_subscription_confirmed_after_subscribe_gave_up_is_restored(fast: None) -> None:
    node = await FakeNode().start()
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_endpoint(f"redis://127.0.0.1:{node.port}"), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        ch = channel("room:slow")
        node.hold = True
        assert not await channels.subscribe(ch)
        assert "subscribe_timeout" in counted
        assert not channels.connected, "a channel owed a restore keeps the bus not ready"
        assert channels.shards() == {f"127.0.0.1:{node.port}": False}
        node.release()
        await until(lambda: sink.of(ch) == ["restoring", "restored"], "restored once confirmed")
        assert channels.connected
        assert await channels.subscribe(ch)
    finally:
        await channels.close()
        await node.stop()


async def test_a_channel_unsubscribed_while_its_ssubscribe_is_in_flight_is_unsubscribed(fast: None) -> None:
    node = await FakeNode().start()
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_endpoint(f"redis://127.0.0.1:{node.port}"), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        ch = channel("room:brief")
        node.hold = True
        waiting = asyncio.create_task(channels.subscribe(ch))
        await until(lambda: any(c.held for c in node.conns), "the answer held")
        channels.unsubscribe(ch)
        assert await waiting is False
        node.release()
        await until(lambda: not node.subscribers(ch), "unsubscribed on the node")
        assert node.publish(ch, b"nobody") == 0
        assert sink.calls == []
        assert channels.connected
    finally:
        await channels.close()
        await node.stop()


async def test_a_shard_down_is_not_ready_alone_and_comes_back(fast: None) -> None:
    cluster = await FakeCluster().start(3)
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_cluster_url(cluster.url()), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        wanted = [channel(f"room:{i}") for i in range(30)]
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in wanted)))
        assert len(channels.shards()) == 3
        down = cluster.owner(wanted[0])
        on_down = {ch for ch in [*wanted, BROADCAST] if cluster.owner(ch) is down}
        down.drop()
        await until(lambda: {c for what, chans in sink.calls if what == "lost" for c in chans} == on_down,
                    "its channels lost")
        await until(lambda: sink.of(wanted[0])[-1:] == ["restored"] and channels.connected, "back")
        assert {c for what, chans in sink.calls for c in chans} == on_down
        assert "reconnect" in counted
        assert all(channels.shards().values())
    finally:
        await channels.close()
        await cluster.stop()


async def test_close_leaves_no_connection_and_no_task(fast: None) -> None:
    cluster = await FakeCluster().start(2)
    channels = ShardedChannels(parse_cluster_url(cluster.url()), Sink(), list[str]().append, "r1")
    channels.start()
    await until(lambda: channels.connected, "ready")
    assert all(await asyncio.gather(*(channels.subscribe(channel(f"room:{i}")) for i in range(10))))
    await channels.close()
    await until(lambda: not any(c.name.startswith(b"ngw-sub:") for n in cluster.nodes for c in n.conns),
                "no subscriber connection left")
    assert not channels.connected
    assert not await channels.subscribe(channel("room:late"))
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("bus-")] == []
    await cluster.stop()


async def test_a_periodic_refresh_moves_channels_whose_slot_moved_without_a_push(
        fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sunsubscribe came (redis/redis#12558 is one such case): the periodic refresh finds
    the slot served by another node, and moves exactly that slot's channels there."""
    monkeypatch.setattr(shards_module, "REFRESH_EVERY", 0.1)
    cluster = await FakeCluster().start(2)
    a, b = cluster.nodes
    sink, counted = Sink(), list[str]()
    channels = ShardedChannels(parse_cluster_url(cluster.url()), sink, counted.append, "r1")
    channels.start()
    try:
        await until(lambda: channels.connected, "ready")
        on_a = [c for i in range(200) if cluster.owner(c := channel(f"room:{i}")) is a][:5]
        assert all(await asyncio.gather(*(channels.subscribe(ch) for ch in on_a)))
        moving = on_a[0]
        cluster.table[key_slot(moving)] = b
        await until(lambda: sink.of(moving)[-1:] == ["restored"] and channels.connected, "moved to B")
        assert sink.of(moving) == ["lost", "restoring", "restored"]
        assert {c for _, chans in sink.calls for c in chans} == {moving}
        assert b.subscribers(moving)
        await until(lambda: not a.subscribers(moving), "unsubscribed on A")
        assert all(a.subscribers(ch) for ch in on_a[1:])
        assert "slot_moved" not in counted
    finally:
        await channels.close()
        await cluster.stop()


@pytest.mark.parametrize("replica", ["t-b3de557b", "0123456789ab", "_"])
def test_every_slot_gets_a_probe_channel_even_a_shard_of_one_slot(replica: str) -> None:
    """A primary just added to a cluster may own a single slot: it still gets a probe channel
    of its own, in that slot (the search used to give up, 5 % of the time, after 50,000 names).
    The first probe name of every slot, by the channel's real name and Redis's own hashing, is
    within the search; the search finds exactly it, for the hardest slot and a sample."""
    first: dict[int, int] = {}
    for n in range(shards_module.PROBE_SEARCH):
        first.setdefault(key_slot(channel(f"__probe:{replica}:{n}")), n)
        if len(first) == SLOTS:
            break
    assert len(first) == SLOTS
    hardest = max(first, key=first.__getitem__)
    for slot in [hardest, *range(0, SLOTS, 997)]:
        assert selfcheck.probe_number(replica, {slot}) == first[slot], slot
    assert selfcheck.probe_number(replica, {1, 2, hardest}) == min(first[1], first[2], first[hardest])
    assert selfcheck.probe_number(replica, set()) is None
