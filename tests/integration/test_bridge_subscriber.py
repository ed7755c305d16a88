"""The bridge's subscriber connection on a real Redis: when Redis drops it, the bridge subscribes
again, says so (a log line and `bridge_resubscribes_total`), and the holder delivers again as
soon as it is back, not a lease renewal later.

After a resubscription the holder may have missed a fence, so it delivers again only once it has
read its own fence anew; that fence is published when the subscription is confirmed. The lease
renews here every 20 s: a bridge waiting for its renewal would sit deaf for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgpack
import pytest
import redis.asyncio

from publisher.bridge.config import load
from publisher.bridge.lease import Lease
from publisher.bridge.runner import Bridge
from publisher.bridge.server import BridgeMetrics
from publisher.transports import async_transport
from tests.support.redis_server import RedisServer
from tests.unit.test_bridge_runner import FakePublisher, count

CHANNEL = "socket.io#/notifications#"


def emit(n: int) -> bytes:
    return msgpack.packb(["e", {"type": 2, "data": ["a", {"n": n}], "nsp": "/notifications"}, {"rooms": ["user:1"]}])


async def wait_until(probe: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """A bridge's state is only observable by asking."""
    for _ in range(int(timeout / 0.02)):
        if probe():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {timeout} s: {what}")


async def test_a_dropped_subscriber_connection_is_counted_and_the_holder_delivers_again_at_once(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    settings = load({"REDIS_URL": redis_server.url, "BRIDGE_LEASE_TTL_MS": "60000",
                     "BRIDGE_LEASE_RENEW_MS": "20000"}, env={})
    transport = async_transport(settings.redis_url)
    lease = Lease(transport, settings.lease_key, "b1", ttl_ms=settings.lease_ttl_ms, renew_ms=settings.lease_renew_ms)
    pub, metrics = FakePublisher(), BridgeMetrics()
    bridge = Bridge(settings, pub, lease, metrics)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(c) for c in (lease.run(bridge.wake_lease, bridge.fenced), bridge.listen(),
                                               bridge.work())]
    producer = redis.asyncio.Redis(port=redis_server.port)
    try:
        await wait_until(bridge.delivering, "the bridge holds the lease and has read its fence")
        await producer.publish(CHANNEL, emit(1))
        await wait_until(lambda: len(pub.calls) == 1, "the first event carried out")

        with caplog.at_level(logging.WARNING, logger="publisher.bridge"):
            assert await producer.client_kill_filter(_type="pubsub") == 1
            await wait_until(lambda: count(metrics, "bridge_resubscribes_total") == 1, "the bridge noticed")
            await wait_until(bridge.delivering, "delivering again (well before the next renewal)")
        assert "producers' channels lost" in caplog.text
        await producer.publish(CHANNEL, emit(2))
        await wait_until(lambda: len(pub.calls) == 2, "the event after the resubscription carried out")
        assert [call[2] for call in pub.calls] == [{"n": 1}, {"n": 2}]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        await producer.aclose()
        await transport.close()
