"""A bad bus message costs one message, never the bus connection (issue 12, item 10).

Every replica that holds a channel receives what is published on it: a message that made the
listener's `data_received` raise closed the pub/sub connection of every replica at once, and
they all reconnected (and would again at each resend). Against real replicas and a real
redis-server: bad v2 control messages published straight onto the sharded channels (SPUBLISH,
docs/wire-protocol.md) are refused at decoding, counted in
`ws_errors_total{kind="bus_bad_envelope"}`, and the replica stays ready, does not reconnect,
and delivers the next event. In process: whatever the sink of the sharded listener
(`ShardedChannels`) raises for a message or a batch, it is counted and the next message is
handled on the same connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio

from gateway.bus.endpoint import parse_endpoint
from gateway.bus.shards import ShardedChannels
from publisher import Publisher
from publisher.envelope import EVERYONE, BusNames
from tests.support.checks import scrape, wait_until
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

pytestmark = pytest.mark.integration

SECRET = secrets.token_hex(32)
ENV = {"JWT_SECRET": SECRET, "DRAIN_SECONDS": "0", "HANDSHAKE_RATE_PER_IP": "10000"}
COINS = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    return scrape(gw).get((name, tuple(sorted(labels.items()))), 0.0)


def channel_of(room: str | None) -> str:
    """The room's sharded channel (docs/wire-protocol.md, "Names"); None: everyone's."""
    return f"socket.io#/notifications#{{{EVERYONE if room is None else room}}}#"


def at(offset: int = 0) -> str:
    """A stream position, `<ms>-<seq>`."""
    return f"{int(time.time() * 1000)}-{offset}"


def control(kind: str, user: str, rooms: Any = None) -> bytes:
    """A v2 control envelope (`rooms`: room -> position), of any content."""
    message: dict[str, Any] = {"v": 2, "k": kind, "t": time.time() * 1000, "u": user}
    if rooms is not None:
        message["rooms"] = rooms
    return json.dumps(message).encode()


@pytest.fixture(scope="module")
def pair(shared_redis: RedisServer) -> Iterator[GatewayCluster]:
    with GatewayCluster(2, shared_redis.url, ENV) as replicas:
        yield replicas
        for replica in replicas:
            print(f"-- {replica.name} log:\n{replica.log_tail(80)}")


@pytest.fixture(scope="module")
def pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher


def bad_controls(user: str) -> dict[str, bytes]:
    return {
        "user_id_over_256": control("kick", "x" * 300),
        "user_id_control_char": control("leave", "a\nb", {"classroom:1": at()}),
        "join_room_over_300": control("join", user, {"quiz:" + "9" * 300: at()}),
        "join_user_room_id_over_256": control("join", user, {"user:" + "x" * 257: at()}),
        "join_admin_other": control("join", user, {"admin:root": at()}),
        "join_room_with_a_brace": control("join", user, {"quiz:{9}": at()}),
        "leave_room_control_char": control("leave", user, {"classroom:\x07": at()}),
        "join_no_rooms": control("join", user, {}),
        "join_rooms_as_a_list": control("join", user, ["classroom:1"]),
        "join_position_not_a_stream_id": control("join", user, {"classroom:1": "e:1-1"}),
        "v1_control": json.dumps({"v": 1, "k": "kick", "t": 1.0, "u": user, "o": "e:1-1"}).encode(),
    }


@pytest.mark.parametrize("channel", ["broadcast", "user"])
def test_a_bad_control_message_is_refused_and_the_connection_kept(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher, shared_redis: RedisServer, channel: str,
) -> None:
    user = uid()
    for i, replica in enumerate(pair):
        clients.connect(f"c{i}", replica.ns_url, token=make_token(SECRET, user), transports=["websocket"])
        assert clients.wait_connected(f"c{i}")["type"] == "connect"
    reconnects = [metric(r, "bus_reconnects_total") for r in pair]
    refused = [metric(r, "ws_errors_total", kind="bus_bad_envelope") for r in pair]
    failed = [metric(r, "bus_events_total", event="message_failed") for r in pair]

    messages = bad_controls(user)
    target = channel_of(None if channel == "broadcast" else f"user:{user}")
    client = shared_redis.client()
    try:
        for message in messages.values():
            assert client.spublish(target, message) == 2, \
                "both replicas still listen (a bad message before this one cost one its bus connection)"
    finally:
        client.close()
    for replica, before in zip(pair, refused, strict=True):
        wait_until(lambda replica=replica, before=before:
                   metric(replica, "ws_errors_total", kind="bus_bad_envelope") == before + len(messages),
                   5, f"{replica.name} counted each bad message in ws_errors_total{{kind=\"bus_bad_envelope\"}}")

    pub.emit("coins:earned", COINS, user=user).result()  # the next good event, on the same connections
    for i in range(len(pair)):
        [event] = clients.wait_events(f"c{i}", "coins:earned", 1)
        assert event.payload == COINS
    for replica, before_reconnects, before_failed in zip(pair, reconnects, failed, strict=True):
        assert replica.http_get("/readyz", timeout=2)[0] == 200, f"{replica.name} is not ready"
        assert metric(replica, "bus_reconnects_total") == before_reconnects, \
            f"{replica.name} reconnected its bus for a bad message"
        assert metric(replica, "bus_events_total", event="message_failed") == before_failed, \
            "refused at decoding, not by an exception in the handler"
        assert replica.alive()
    assert [r["type"] for r in clients.log("c0")].count("disconnect") == 0


# -- the sharded listener itself -----------------------------------------------------------------


class Sink:
    """A `ChannelSink` whose message handler raises on messages starting with "boom", and whose
    batch end raises when told to."""

    def __init__(self, *, failing_batches: bool = False) -> None:
        self.received: list[bytes] = []
        self.failing_batches = failing_batches

    def on_message(self, raw: bytes) -> None:
        if raw.startswith(b"boom"):
            raise RuntimeError(f"handler failed on {raw!r}")
        self.received.append(raw)

    def begin_batch(self) -> None:
        return None

    def end_batch(self) -> None:
        if self.failing_batches:
            raise RuntimeError("a write failed while flushing the batch")

    def channels_lost(self, channels: list[bytes]) -> None:
        return None

    def channels_restoring(self, channels: list[bytes]) -> None:
        return None

    async def channels_restored(self, channels: list[bytes]) -> None:
        return None


async def _until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _transports(channels: ShardedChannels) -> list[object]:
    return [shard.proto.transport if shard.proto is not None else None for shard in channels._shards.values()]


async def test_a_handler_that_raises_costs_one_message_not_the_connection(redis_server: RedisServer) -> None:
    sink, counted = Sink(), []
    channel = BusNames().room_channel("user:42").encode()
    listener = ShardedChannels(parse_endpoint(redis_server.url), sink, counted.append, "bad-msgs")
    publisher = redis.asyncio.Redis(port=redis_server.port)
    listener.start()
    try:
        await _until(lambda: listener.connected, "the listener connected")
        assert await listener.subscribe(channel)
        transports = _transports(listener)
        async with publisher.pipeline(transaction=False) as pipe:  # one read may bring them all
            for message in (b"one", b"boom-1", b"two", b"boom-2", b"boom-3", b"three"):
                pipe.spublish(channel, message)
            await pipe.execute()
        await _until(lambda: len(sink.received) == 3, "three good messages")
        assert sink.received == [b"one", b"two", b"three"]
        assert counted == ["message_failed"] * 3, counted
        assert listener.connected
        assert _transports(listener) == transports, "the listener reconnected"
        await publisher.spublish(channel, b"four")
        await _until(lambda: len(sink.received) == 4, "the next message")
        assert sink.received[-1] == b"four"
        assert "reconnect" not in counted
    finally:
        await listener.close()
        await publisher.aclose()


async def test_a_batch_hook_that_raises_does_not_cost_the_connection(redis_server: RedisServer) -> None:
    sink, counted = Sink(failing_batches=True), []
    channel = BusNames().room_channel("user:42").encode()
    listener = ShardedChannels(parse_endpoint(redis_server.url), sink, counted.append, "bad-batch")
    publisher = redis.asyncio.Redis(port=redis_server.port)
    listener.start()
    try:
        await _until(lambda: listener.connected, "the listener connected")
        assert await listener.subscribe(channel)
        transports = _transports(listener)
        for message in (b"one", b"two"):
            await publisher.spublish(channel, message)
        await _until(lambda: len(sink.received) == 2, "both messages")
        assert sink.received == [b"one", b"two"]
        assert "reconnect" not in counted
        assert listener.connected
        assert _transports(listener) == transports, "the listener reconnected"
    finally:
        await listener.close()
        await publisher.aclose()
