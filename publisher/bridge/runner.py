"""The bridge process: subscribe to the producers' channels, decode, and, while this bridge
holds the lease, carry each message out on the bus, in the order received.

One worker carries messages out in the order received: a producer's events for a room reach the
bus in the order it sent them (what it relied on with Node's adapter). What waits when the
worker comes round is sent together: consecutive single-target emits in one pipeline. A standby is subscribed
too (hot) but leaves every message to the active bridge; the lease is checked again right before
each publish, so a bridge that lost it stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import redis
import redis.asyncio
from aiohttp import web

from publisher.async_client import AsyncPublisher
from publisher.bridge import emitter, socketio_json
from publisher.bridge.config import BridgeSettings
from publisher.bridge.lease import ACTIVE, STANDBY, Lease
from publisher.bridge.operations import (
    Emit,
    Operation,
    Refused,
    RoomPublisher,
    carry_out,
    check_namespace,
    simple,
)
from publisher.bridge.server import BridgeMetrics, routes, setup_logging
from publisher.cluster.urls import is_cluster_url, parse_cluster_url
from publisher.errors import PublisherError
from publisher.redis_url import async_client
from publisher.transports import async_transport

log = logging.getLogger("publisher.bridge")
QUEUE_LIMIT = 10_000  # messages decoded and waiting for the bus; beyond it, reading waits
BATCH_LIMIT = 500  # emits in one pipeline at most, as publisher.client.BATCH_SIZE
RESUBSCRIBE_AFTER_S = 1.0
PING_AFTER_S = 5.0  # quiet for this long: PING the subscriber connection
SILENT_AFTER_S = 15.0  # nothing at all (not even the PONG) for this long: the connection is dead


def subscriber_client(url: str) -> redis.asyncio.Redis:
    """A client for classic pub/sub. On a Redis Cluster, PUBLISH reaches every node, so any
    node will do: the first seed (the next ones are for the publisher's routing)."""
    if is_cluster_url(url):
        node = parse_cluster_url(url).seed_nodes()[0]
        return redis.asyncio.Redis(**node.client_kwargs())
    return async_client(url)


class Bridge:
    def __init__(self, settings: BridgeSettings, publisher: RoomPublisher, lease: Lease,
                 metrics: BridgeMetrics) -> None:
        self.settings = settings
        self._pub = publisher
        self.lease = lease
        self.metrics = metrics
        self.subscribed = False
        self._queue: asyncio.Queue[tuple[str, Operation]] = asyncio.Queue(QUEUE_LIMIT)
        self._request_head = settings.emitter_prefix + "-request#"

    # -- readiness -----------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        if not self.subscribed:
            return "not subscribed to the producers' channels"
        if self.lease.active() or (self.lease.role == STANDBY and self.lease.reachable):
            return None
        return "the lease cannot be read (Redis unreachable)"

    # -- in: the producers' channels --------------------------------------------------------

    def source_of(self, channel: str) -> str:
        if channel == self.settings.socketio_channel:
            return "python_socketio"
        if channel.startswith(self._request_head):
            return "emitter_request"
        return "emitter"

    def decode(self, source: str, channel: str, raw: bytes) -> Operation:
        if source == "python_socketio":
            return socketio_json.decode(raw)
        check_namespace(emitter.namespace_of(channel, self.settings.emitter_prefix))
        if source == "emitter_request":
            return emitter.decode_request(raw)
        return emitter.decode_broadcast(raw)

    def on_message(self, channel: str, raw: bytes) -> tuple[str, Operation] | None:
        """What to carry out for one message, or None (refused, counted; or left to the active
        bridge)."""
        source = self.source_of(channel)
        self.metrics.received.labels(source=source).inc()
        if not self.lease.active():
            self.metrics.skipped.labels(source=source).inc()
            return None
        try:
            return source, self.decode(source, channel, raw)
        except Refused as exc:
            self._refuse(source, exc.reason, exc.detail)
        except Exception as exc:  # a decoder's bug must not end the bridge for everyone
            log.exception("message refused: the decoder failed", extra={"source": source})
            self._refuse(source, "malformed", f"the decoder failed: {type(exc).__name__}")
        return None

    def _refuse(self, source: str, reason: str, detail: str) -> None:
        self.metrics.refused.labels(source=source, reason=reason).inc()
        log.warning("message refused: %s", detail, extra={"source": source, "reason": reason})

    def _channels(self) -> tuple[list[str], list[str]]:
        patterns, channels = [], []
        if "emitter" in self.settings.sources:
            patterns = [self.settings.emitter_prefix + "#*", self._request_head + "*"]
        if "python-socketio" in self.settings.sources:
            channels = [self.settings.socketio_channel]
        return patterns, channels

    async def listen(self) -> None:
        """Subscribe, read, and subscribe again whenever the connection drops, or goes silent:
        when nothing came for a while it PINGs, and a connection that does not answer within
        `SILENT_AFTER_S` is taken for dead (a peer gone without a reset never says so)."""
        patterns, channels = self._channels()
        wanted = len(patterns) + len(channels)
        loop = asyncio.get_running_loop()
        while True:
            client = subscriber_client(self.settings.redis_url)
            pubsub = client.pubsub()
            confirmed = 0
            try:
                if patterns:
                    await pubsub.psubscribe(*patterns)
                if channels:
                    await pubsub.subscribe(*channels)
                heard = pinged = loop.time()
                while True:
                    message = await pubsub.get_message(timeout=PING_AFTER_S)
                    now = loop.time()
                    if message is None:
                        if now - heard > SILENT_AFTER_S:
                            raise redis.ConnectionError(f"no answer from Redis for {SILENT_AFTER_S:.0f} s")
                        if now - pinged >= PING_AFTER_S:
                            await pubsub.ping()
                            pinged = now
                        continue
                    heard = now
                    kind = message["type"]
                    if kind in ("message", "pmessage"):
                        item = self.on_message(_text(message["channel"]), message["data"])
                        if item is not None:
                            # A full queue stops the reading: what follows waits in Redis's
                            # output buffer for this client (client-output-buffer-limit pubsub).
                            await self._queue.put(item)
                            heard = loop.time()
                    elif kind in ("subscribe", "psubscribe"):
                        confirmed += 1
                        if confirmed == wanted:
                            self.subscribed = True
                            self.metrics.subscribed.set(1)
                            log.info("subscribed", extra={"patterns": patterns, "channels": channels})
            except (redis.RedisError, OSError) as exc:
                log.warning("producers' channels lost, subscribing again: %s", exc)
            finally:
                self.subscribed = False
                self.metrics.subscribed.set(0)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await asyncio.sleep(RESUBSCRIBE_AFTER_S)

    # -- out: the bus -------------------------------------------------------------------------

    async def work(self) -> None:
        """Carry messages out in the order received. Runs of single-target emits already waiting
        go together in one pipeline (one round trip; within a room the bus keeps their order),
        anything else one at a time."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_LIMIT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if not self.lease.active():  # lost since they were received: the new holder has them
                for source, _ in batch:
                    self.metrics.skipped.labels(source=source).inc()
                continue
            run: list[tuple[str, Emit]] = []
            for source, op in batch:
                if isinstance(op, Emit) and simple(op):
                    run.append((source, op))
                    continue
                await self._emits(run)
                run = []
                await self._carry_out(source, op)
            await self._emits(run)

    async def _carry_out(self, source: str, op: Operation) -> None:
        try:
            await carry_out(op, self._pub)
        except PublisherError as exc:
            self._lost(source, exc)
        except ValueError as exc:  # the publisher's checks: event name, payload, room
            self._refuse(source, "invalid", str(exc))
        else:
            self.metrics.bridged.labels(source=source).inc()

    async def _emits(self, run: list[tuple[str, Emit]]) -> None:
        if len(run) < 2:
            for source, op in run:
                await self._carry_out(source, op)
            return
        queued: list[str] = []
        try:
            async with self._pub.pipeline() as pipe:
                for source, op in run:
                    try:  # each emit is checked as it is queued
                        if op.rooms:
                            pipe.emit(op.event, op.data, room=op.rooms[0])
                        else:
                            pipe.emit(op.event, op.data, broadcast=True)
                    except ValueError as exc:
                        self._refuse(source, "invalid", str(exc))
                    else:
                        queued.append(source)
        except PublisherError as exc:
            for source in queued:
                self._lost(source, exc)
            return
        for source in queued:
            self.metrics.bridged.labels(source=source).inc()

    def _lost(self, source: str, exc: Exception) -> None:
        self.metrics.publish_errors.inc()
        log.error("bus operation failed, message lost: %s", exc, extra={"source": source})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def serve(settings: BridgeSettings, stop: asyncio.Event | None = None) -> None:
    """Run the bridge until `stop` is set (or SIGTERM / SIGINT)."""
    setup_logging(settings.log_level)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics = BridgeMetrics()
    pub = AsyncPublisher(settings.redis_url, channel_prefix=settings.channel_prefix,
                         key_prefix=settings.key_prefix, history_max_len=settings.history_max_len,
                         recovery_window_s=settings.recovery_window_s)
    lease_transport = async_transport(settings.redis_url)
    lease = Lease(lease_transport, settings.lease_key, settings.bridge_id, ttl_ms=settings.lease_ttl_ms,
                  renew_ms=settings.lease_renew_ms, on_role=metrics.set_role)
    bridge = Bridge(settings, pub, lease, metrics)
    app = web.Application()
    app.add_routes(routes(metrics, bridge.not_ready))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("bridge started", extra={"settings": settings.public_view()})
    tasks = [loop.create_task(coro, name=name) for name, coro in (
        ("lease", lease.run()), ("listen", bridge.listen()), ("work", bridge.work()))]
    try:
        done = loop.create_task(stop.wait())
        await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if lease.role == ACTIVE:
            await lease.release()
        await runner.cleanup()
        await pub.close()
        await lease_transport.close()
        log.info("bridge stopped")
