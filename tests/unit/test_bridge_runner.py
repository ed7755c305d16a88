"""`publisher.bridge.runner.Bridge` on a fake publisher and lease: messages decoded and carried out
in order, single-target emits batched, bad ones refused and counted without stopping the rest,
nothing delivered without the lease."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
import orjson

from publisher.bridge.config import load
from publisher.bridge.runner import Bridge
from publisher.bridge.server import BridgeMetrics
from publisher.errors import PublishError


class FakeLease:
    def __init__(self) -> None:
        self.holding = True
        self.role = "active"
        self.reachable = True
        self.token = "me"
        self.term = 1
        self.fence_channel = "lease:fence"
        self.ttl_s = 0.3
        self.fences: list[str] = []
        self.on_fence: Any = None

    async def release(self) -> None:
        self.holding = False

    async def fence(self, kind: str) -> bool:
        self.fences.append(kind)
        if self.on_fence is not None:
            self.on_fence(kind)
        return True

    def active(self) -> bool:
        return self.holding


class FakeBatch:
    def __init__(self, pub: FakePublisher) -> None:
        self.pub = pub
        self.queued: list[tuple[Any, ...]] = []

    def emit(self, event: str, data: Any, *, room: str | None = None, user: Any = None,
             broadcast: bool = False, strict: bool | None = None) -> None:
        if " " in event:
            raise ValueError(f"bad event name {event!r}")
        self.queued.append(("emit", event, data, room))

    async def __aenter__(self) -> FakeBatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.pub.down:
            raise PublishError("down")
        self.pub.calls.append(("pipeline", *self.queued))


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.down = False

    def pipeline(self) -> FakeBatch:
        return FakeBatch(self)

    async def emit(self, event: str, data: Any, *, room: str | None = None, user: Any = None,
                   broadcast: bool = False, strict: bool | None = None) -> str:
        if " " in event:
            raise ValueError(f"bad event name {event!r}")
        self.calls.append(("emit", event, data, room))
        return "1-0"

    async def emit_rooms(self, event: str, data: Any, rooms: Any, *, except_rooms: Any = (),
                         strict: bool | None = None) -> dict[str, str]:
        self.calls.append(("emit_rooms", event, data, rooms, except_rooms))
        return {}

    async def sockets_join(self, room: Any, rooms: Any, *, except_rooms: Any = ()) -> dict[str, str]:
        self.calls.append(("sockets_join", room, rooms, except_rooms))
        return {}

    async def sockets_leave(self, room: Any, rooms: Any, *, except_rooms: Any = ()) -> dict[str, str]:
        self.calls.append(("sockets_leave", room, rooms, except_rooms))
        return {}

    async def disconnect_room(self, room: Any, *, except_rooms: Any = ()) -> None:
        self.calls.append(("disconnect_room", room, except_rooms))


def emitter(event: str, data: Any, rooms: list[str], excluded: list[str] | None = None) -> bytes:
    return msgpack.packb(["emitter", {"type": 2, "data": [event, data], "nsp": "/notifications"},
                          {"rooms": rooms, "except": excluded or [], "flags": {}}])


def make() -> tuple[Bridge, FakePublisher, FakeLease, BridgeMetrics]:
    pub, lease, metrics = FakePublisher(), FakeLease(), BridgeMetrics()
    bridge = Bridge(load({}, env={}), pub, lease, metrics)  # type: ignore[arg-type]
    bridge.on_message(lease.fence_channel, b"take me 1")  # its own fence read: it delivers
    return bridge, pub, lease, metrics


def count(metrics: BridgeMetrics, name: str, **labels: str) -> float:
    """One sample, read from the bridge's own counters (the registry's process collector reads
    /proc, a blocking call in the event loop)."""
    for metric in (metrics.received, metrics.bridged, metrics.refused, metrics.skipped, metrics.publish_errors,
                   metrics.lost, metrics.resubscribes):
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
    return 0.0


async def feed_and_work(bridge: Bridge, messages: list[tuple[str, bytes]]) -> None:
    for channel, raw in messages:
        item = bridge.on_message(channel, raw)
        if item is not None:
            await bridge._queue.put(item)
    worker = asyncio.get_running_loop().create_task(bridge.work())
    # the worker takes everything queued, then waits for more (it never ends by itself)
    await asyncio.wait([worker], timeout=0.2)
    assert bridge._queue.empty()
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


CH = "socket.io#/notifications#"
REQ = "socket.io-request#/notifications#"


async def test_in_order_batched_and_bad_messages_refused_without_stopping() -> None:
    bridge, pub, _, metrics = make()
    await feed_and_work(bridge, [
        (CH, emitter("a", 1, ["user:1"])),
        (CH, b"\x93\xc1"),                                   # not msgpack
        (CH, emitter("bad name", 2, ["user:1"])),            # refused by the publisher's checks
        (CH, emitter("b", 3, [])),                           # everyone
        (REQ, orjson.dumps({"type": 2, "opts": {"rooms": ["c:1"], "except": []}, "rooms": ["q"]})),
        (CH, emitter("c", 4, ["x", "y"], ["z"])),
        ("socket.io#/other#", emitter("d", 5, [])),           # another namespace
        ("socketio", orjson.dumps({"method": "emit", "event": "e", "data": [6], "namespace": "/notifications",
                                   "room": "user:2"})),
    ])
    assert pub.calls == [
        ("pipeline", ("emit", "a", 1, "user:1"), ("emit", "b", 3, None)),
        ("sockets_join", "c:1", ("q",), ()),
        ("emit_rooms", "c", 4, ("x", "y"), ("z",)),
        ("emit", "e", 6, "user:2"),
    ]
    assert count(metrics, "bridge_messages_bridged_total", source="emitter") == 3
    assert count(metrics, "bridge_messages_refused_total", source="emitter", reason="malformed") == 1
    assert count(metrics, "bridge_messages_refused_total", source="emitter", reason="invalid") == 1
    assert count(metrics, "bridge_messages_refused_total", source="emitter", reason="namespace") == 1


async def test_nothing_is_delivered_without_the_lease_and_failures_are_counted() -> None:
    bridge, pub, lease, metrics = make()
    lease.holding = False
    await feed_and_work(bridge, [(CH, emitter("a", 1, ["user:1"]))])
    assert pub.calls == []
    assert count(metrics, "bridge_messages_standby_total", source="emitter") == 1
    lease.holding = True
    pub.down = True
    await feed_and_work(bridge, [(CH, emitter("a", 1, ["user:1"])), (CH, emitter("b", 2, ["user:2"]))])
    assert count(metrics, "bridge_publish_errors_total") == 2
    assert bridge.not_ready() == "not subscribed to the producers' channels"


async def test_a_lease_lost_mid_batch_stops_publishing_and_counts_what_it_held_as_lost() -> None:
    """Messages read while active but not yet on the bus when the lease lapses: the standby left
    them to this bridge when they came, so nobody will deliver them. They must not go out (a
    bridge that lost the lease stops at once, not at the end of its batch), and they are counted
    as lost, not as 'left to the active bridge'."""
    bridge, pub, lease, metrics = make()
    real_emit_rooms = pub.emit_rooms

    async def emit_rooms_then_lose_the_lease(*args: Any, **kwargs: Any) -> dict[str, str]:
        out = await real_emit_rooms(*args, **kwargs)
        lease.holding = False  # the renewal failed while this went out
        return out

    pub.emit_rooms = emit_rooms_then_lose_the_lease  # type: ignore[method-assign]
    await feed_and_work(bridge, [
        (CH, emitter("a", 1, ["x", "y"])),
        (CH, emitter("b", 2, ["x", "y"])),
        (CH, emitter("c", 3, ["user:1"])),
        (CH, emitter("d", 4, ["user:2"])),
    ])
    assert pub.calls == [("emit_rooms", "a", 1, ("x", "y"), ())]
    assert count(metrics, "bridge_messages_lost_total", source="emitter", reason="lease_lost") == 3
    assert count(metrics, "bridge_messages_standby_total", source="emitter") == 0
    assert count(metrics, "bridge_messages_bridged_total", source="emitter") == 1


async def test_fences_split_the_stream_between_the_holders() -> None:
    """What precedes another bridge's TAKE fence is this bridge's, what follows it is not; a
    bridge that holds the lease delivers only after reading its own fence for that term (a
    message that reached it late, from before it took the lease, is the old holder's)."""
    bridge, pub, lease, metrics = make()
    await feed_and_work(bridge, [
        (CH, emitter("a", 1, ["user:1"])),
        (lease.fence_channel, b"take other 7"),
        (CH, emitter("b", 2, ["user:1"])),
    ])
    assert pub.calls == [("emit", "a", 1, "user:1")]
    assert count(metrics, "bridge_messages_standby_total", source="emitter") == 1

    lease.term = 2  # this bridge took the lease again: its new fence is not read yet
    await feed_and_work(bridge, [
        (CH, emitter("c", 3, ["user:1"])),
        (lease.fence_channel, b"take me 1"),  # an old one: not this term's
        (CH, emitter("d", 4, ["user:1"])),
        (lease.fence_channel, b"take me 2"),
        (CH, emitter("e", 5, ["user:1"])),
        (lease.fence_channel, b"bad fence"),  # logged, changes nothing
        (CH, emitter("f", 6, ["user:1"])),
    ])
    assert pub.calls[1:] == [("pipeline", ("emit", "e", 5, "user:1"), ("emit", "f", 6, "user:1"))]
    assert count(metrics, "bridge_messages_standby_total", source="emitter") == 3
    assert not bridge.wake_lease.is_set()
    bridge.on_message(lease.fence_channel, b"released other 7")
    assert bridge.wake_lease.is_set()


async def test_a_planned_stop_delivers_until_the_new_holders_fence() -> None:
    """Released, the standbys told; what is read before the new holder's TAKE fence is still
    this bridge's (the standby leaves it), what follows it is not."""
    bridge, pub, lease, metrics = make()

    def standby_takes_over(kind: str) -> None:  # what the subscriber reads meanwhile
        for channel, raw in [(CH, emitter("a", 1, ["user:1"])), (lease.fence_channel, b"take other 3"),
                             (CH, emitter("b", 2, ["user:1"]))]:
            item = bridge.on_message(channel, raw)
            if item is not None:
                bridge._queue.put_nowait(item)

    lease.on_fence = standby_takes_over
    lease.ttl_s = 60.0
    await asyncio.wait_for(bridge.hand_over(), 5)  # at the fence, not after a lease TTL
    assert lease.fences == ["released"]
    assert not lease.holding
    assert not bridge.fenced()
    await feed_and_work(bridge, [])
    assert pub.calls == [("emit", "a", 1, "user:1")]
    assert count(metrics, "bridge_messages_standby_total", source="emitter") == 1


async def test_a_planned_stop_without_a_standby_stops_delivering_after_one_lease_ttl() -> None:
    bridge, _, lease, _ = make()
    await asyncio.wait_for(bridge.hand_over(), 2)
    assert lease.fences == ["released"]
    assert not bridge.delivering()
