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
    return Bridge(load({}, env={}), pub, lease, metrics), pub, lease, metrics  # type: ignore[arg-type]


def count(metrics: BridgeMetrics, name: str, **labels: str) -> float:
    """One sample, read from the bridge's own counters (the registry's process collector reads
    /proc, a blocking call in the event loop)."""
    for metric in (metrics.received, metrics.bridged, metrics.refused, metrics.skipped, metrics.publish_errors):
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
