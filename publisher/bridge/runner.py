"""The bridge process: subscribe to the producers' channels, decode, and, while this bridge
holds the lease, carry each message out on the bus, in the order received.

One worker carries messages out in the order received: a producer's events for a room reach the
bus in the order it sent them (what it relied on with Node's adapter). What waits when the
worker comes round is sent together: consecutive single-target emits in one pipeline. A standby is subscribed
too (hot) but leaves every message to the active bridge; the lease is checked again right before
each bus operation, so a bridge that lost it stops at once. Which messages are whose is decided
by the fences on the lease's channel (`lease`): a holder delivers what follows its own, which
also lets a planned stop hand over without a gap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import redis
import redis.asyncio

from publisher.bridge import emitter, socketio_json
from publisher.bridge.config import BridgeSettings
from publisher.bridge.lease import RELEASED, STANDBY, TAKE, Lease
from publisher.bridge.operations import (
    Emit,
    Operation,
    Refused,
    RoomPublisher,
    carry_out,
    check_namespace,
    simple,
)
from publisher.bridge.server import BridgeMetrics
from publisher.cluster.urls import is_cluster_url, parse_cluster_url
from publisher.errors import PublisherError
from publisher.redis_url import async_client

log = logging.getLogger("publisher.bridge")
QUEUE_LIMIT = 10_000  # messages decoded and waiting for the bus; beyond it, reading waits
BATCH_LIMIT = 500  # emits in one pipeline at most: a bound on one call's memory and latency
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
        # The term of this bridge's own TAKE fence, read on the subscriber connection (0: none,
        # or another bridge's TAKE read since): messages read from there on are this bridge's.
        self._fenced_term = 0
        self._handover_until: float | None = None  # stopping: may deliver until then, or another's TAKE
        self.wake_lease = asyncio.Event()  # another bridge released the lease: try to take it now
        self._superseded = asyncio.Event()  # another bridge's TAKE fence read

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

    # -- whose messages: the lease and the fences ----------------------------------------------

    def fenced(self) -> bool:
        """Has this bridge read its own TAKE fence for the lease it holds now?"""
        return self._fenced_term != 0 and self._fenced_term == self.lease.term

    def may_send(self) -> bool:
        """Sure of the lease (or handing it over, until the new holder's fence or a deadline)."""
        if self.lease.active():
            return True
        return self._handover_until is not None and asyncio.get_running_loop().time() < self._handover_until

    def delivering(self) -> bool:
        """Are the messages read now this bridge's?"""
        return self.fenced() and self.may_send()

    def on_fence(self, raw: bytes) -> None:
        """A fence splits the producers' stream: from this point on, messages are the TAKE
        fence's bridge's. Read by every bridge at the same place among the messages."""
        try:
            kind, token, term = raw.decode().split(" ")
            number = int(term)
        except ValueError:
            log.warning("lease fence not understood: %r", raw[:100])
            return
        if kind == TAKE:
            mine = token == self.lease.token
            if not mine and self._fenced_term:
                log.info("lease: another bridge's fence read, its messages are not this one's")
            self._fenced_term = number if mine else 0
            if not mine:
                self._superseded.set()
        elif kind == RELEASED and token != self.lease.token:
            self.wake_lease.set()

    def on_message(self, channel: str, raw: bytes) -> tuple[str, Operation] | None:
        """What to carry out for one message, or None (refused, counted; or left to the active
        bridge)."""
        if channel == self.lease.fence_channel:
            self.on_fence(raw)
            return None
        source = self.source_of(channel)
        self.metrics.inc(self.metrics.received, source)
        if not self.delivering():
            self.metrics.inc(self.metrics.skipped, source)
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
        patterns, channels = [], [self.lease.fence_channel]
        if "emitter" in self.settings.sources:
            patterns = [self.settings.emitter_prefix + "#*", self._request_head + "*"]
        if "python-socketio" in self.settings.sources:
            channels.append(self.settings.socketio_channel)
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
                            self.wake_lease.set()  # a holder publishes its fence now, to be read here
                            log.info("subscribed", extra={"patterns": patterns, "channels": channels})
            except (redis.RedisError, OSError) as exc:
                # What producers publish until the subscription is back is lost: say so, count it
                log.warning("producers' channels lost, subscribing again: %s", exc)
                self.metrics.resubscribes.inc()
            finally:
                # Fences may have gone by unread: deliver again only after one read anew
                self._fenced_term = 0
                self.subscribed = False
                self.metrics.subscribed.set(0)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            # at once after a connection that worked (every moment away loses messages), then paced
            await asyncio.sleep(0 if confirmed == wanted else RESUBSCRIBE_AFTER_S)

    # -- out: the bus -------------------------------------------------------------------------

    async def work(self) -> None:
        """Carry messages out in the order received. Runs of single-target emits already waiting
        go together in one pipeline (one round trip; within a room the bus keeps their order),
        anything else one at a time."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_LIMIT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._carry_out_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _carry_out_batch(self, batch: list[tuple[str, Operation]]) -> None:
        """The lease is checked before each bus operation, not once per batch: a batch can take
        many round trips (room controls take two each), and a bridge that lost the lease must
        stop at once. What it read while active and had not sent then is lost: the standby left
        those messages to this bridge when they came, so they are counted and logged as lost."""
        i = 0
        while i < len(batch):
            if not self.may_send():
                self._lost_with_lease(batch[i:])
                return
            run: list[tuple[str, Emit]] = []
            while i + len(run) < len(batch):
                source, op = batch[i + len(run)]
                if not (isinstance(op, Emit) and simple(op)):
                    break
                run.append((source, op))
            if run:
                await self._emits(run)
                i += len(run)
            else:
                await self._carry_out(*batch[i])
                i += 1

    def _lost_with_lease(self, items: list[tuple[str, Operation]]) -> None:
        for source, _ in items:
            self.metrics.lost.labels(source=source, reason="lease_lost").inc()
        log.error("lease lost: %d messages read while active and not yet on the bus are lost", len(items),
                  extra={"lost": len(items)})

    async def _carry_out(self, source: str, op: Operation) -> None:
        try:
            await carry_out(op, self._pub)
        except PublisherError as exc:
            self._lost(source, exc)
        except ValueError as exc:  # the publisher's checks: event name, payload, room
            self._refuse(source, "invalid", str(exc))
        else:
            self.metrics.inc(self.metrics.bridged, source)

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
        for source, n in collections.Counter(queued).items():  # one labelled inc per source, not per emit
            self.metrics.inc(self.metrics.bridged, source, n)

    async def hand_over(self) -> None:
        """A planned stop of the holder: release the lease, have the standbys try at once, and
        go on delivering until the new holder's TAKE fence is read (what precedes it is this
        bridge's, what follows it the new holder's), for one lease TTL at most (no standby: the
        stop waits that long). The lease task must be stopped first, or it would retake it."""
        delivering = self.fenced()  # not while subscribing again: then nothing to hand over
        self._handover_until = asyncio.get_running_loop().time() + self.lease.ttl_s
        self._superseded.clear()
        await self.lease.release()
        await self.lease.fence(RELEASED)
        if not delivering:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._superseded.wait(), self.lease.ttl_s)
        if self.fenced():
            log.warning("lease handed over without a new holder's fence within the lease TTL")
            self._fenced_term = 0
        else:
            log.info("lease handed over: the new holder's fence read")

    async def drain(self, timeout: float) -> None:
        """Carry out what was read while this bridge delivered, before the process ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        left = self._queue.qsize()
        if left:
            log.error("stopping: %d messages read and not yet on the bus are lost", left)
            while not self._queue.empty():
                source, _ = self._queue.get_nowait()
                self.metrics.lost.labels(source=source, reason="stopped").inc()

    def _lost(self, source: str, exc: Exception) -> None:
        self.metrics.publish_errors.inc()
        log.error("bus operation failed, message lost: %s", exc, extra={"source": source})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
