"""A bad bus message costs one message, never the bus connection (issue 12, item 10).

Every replica that holds a channel receives what is published on it: a message that made the
listener's `data_received` raise closed the pub/sub connection of every replica at once, and
they all reconnected (and would again at each resend). Against real replicas and a real
redis-server: bad control messages published straight onto subscribed channels are refused
at decoding, counted in `ws_errors_total{kind="bus_bad_envelope"}`, and the replica stays
ready, does not reconnect, and delivers the next event. In process: whatever a message's
handler raises, the subscriber counts it and handles the next message on the same connection.
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
from gateway.bus.subscriber import Subscriber
from publisher import Publisher
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
    return "socket.io#/notifications#" + (f"{room}#" if room is not None else "")


def control(kind: str, user: str, rooms: Any = None, seq: int = 1) -> bytes:
    """A control envelope as the publish script leaves it (with `o`), of any content."""
    message: dict[str, Any] = {"v": 1, "k": kind, "t": time.time() * 1000, "u": user,
                               "o": f"badmsgs:{int(time.time() * 1000)}-{seq}"}
    if rooms is not None:
        message["rooms"] = rooms
    return json.dumps(message).encode()


@pytest.fixture
def clients() -> Iterator[NodeClients]:
    with NodeClients() as driver:
        yield driver
        print(f"-- socket.io-client driver stderr:\n{driver.stderr_text()}")
    assert not driver.problems(), driver.problems()


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
        "user_id_control_char": control("leave", "a\nb", ["classroom:1"]),
        "join_room_over_300": control("join", user, ["quiz:" + "9" * 300]),
        "join_user_room_id_over_256": control("join", user, ["user:" + "x" * 257]),
        "join_admin_other": control("join", user, ["admin:root"]),
        "leave_room_control_char": control("leave", user, ["classroom:\x07"]),
        "join_no_rooms": control("join", user, []),
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
            assert client.publish(target, message) == 2, \
                "both replicas still listen (a bad message before this one cost one its bus connection)"
    finally:
        client.close()
    for replica, before in zip(pair, refused, strict=True):
        wait_until(lambda replica=replica, before=before:
                   metric(replica, "ws_errors_total", kind="bus_bad_envelope") == before + len(messages),
                   5, f"{replica.name} counted each bad message in ws_errors_total{{kind=\"bus_bad_envelope\"}}")

    pub.emit("coins:earned", COINS, user=user)  # the next good event, on the same connections
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


# -- the subscriber itself ---------------------------------------------------------------------


async def _noop() -> None:
    return None


async def test_a_handler_that_raises_costs_one_message_not_the_connection(redis_server: RedisServer) -> None:
    received: list[bytes] = []
    counted: list[str] = []

    def on_message(message: bytes) -> None:
        if message.startswith(b"boom"):
            raise RuntimeError(f"handler failed on {message!r}")
        received.append(message)

    subscriber = Subscriber(parse_endpoint(redis_server.url), on_message, probe_channel=b"probe",
                            on_connected=_noop, on_resubscribed=_noop, on_disconnected=lambda: None,
                            publish_probe=_noop, counters=counted.append)
    publisher = redis.asyncio.Redis(port=redis_server.port)
    subscriber.start()
    try:
        for _ in range(500):
            if subscriber.connected:
                break
            await asyncio.sleep(0.01)
        assert await subscriber.subscribe(b"chan")
        transport = subscriber._proto.transport if subscriber._proto is not None else None
        async with publisher.pipeline(transaction=False) as pipe:  # one read may bring them all
            for message in (b"one", b"boom-1", b"two", b"boom-2", b"boom-3", b"three"):
                pipe.publish(b"chan", message)
            await pipe.execute()
        for _ in range(500):
            if len(received) == 3:
                break
            await asyncio.sleep(0.01)
        assert received == [b"one", b"two", b"three"]
        assert counted == ["message_failed"] * 3, counted
        assert subscriber.connected
        assert subscriber._proto is not None
        assert subscriber._proto.transport is transport, "the subscriber reconnected"
        await publisher.publish(b"chan", b"four")
        for _ in range(500):
            if len(received) == 4:
                break
            await asyncio.sleep(0.01)
        assert received[-1] == b"four"
        assert "reconnect" not in counted
    finally:
        await subscriber.close()
        await publisher.aclose()


async def test_a_batch_hook_that_raises_does_not_cost_the_connection(redis_server: RedisServer) -> None:
    received: list[bytes] = []
    counted: list[str] = []
    subscriber = Subscriber(parse_endpoint(redis_server.url), received.append, probe_channel=b"probe",
                            on_connected=_noop, on_resubscribed=_noop, on_disconnected=lambda: None,
                            publish_probe=_noop, counters=counted.append)

    def flush() -> None:
        raise RuntimeError("a write failed while flushing the batch")

    subscriber.batch_end = flush
    publisher = redis.asyncio.Redis(port=redis_server.port)
    subscriber.start()
    try:
        for _ in range(500):
            if subscriber.connected:
                break
            await asyncio.sleep(0.01)
        assert await subscriber.subscribe(b"chan")
        for message in (b"one", b"two"):
            await publisher.publish(b"chan", message)
        for _ in range(500):
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
        assert received == [b"one", b"two"]
        assert "reconnect" not in counted
        assert subscriber.connected
    finally:
        await subscriber.close()
        await publisher.aclose()
