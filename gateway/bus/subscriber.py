"""Pub/sub version 1: one connection to Redis, SUBSCRIBE per room (`Subscriber`).

The gateway's bus no longer uses it: `redis_bus` listens through `shards.ShardedChannels`
(wire version 2: one connection per shard, SSUBSCRIBE). It stays while tests still drive it
(tests/integration/test_bus_bad_messages.py), and goes with them. The reading side both
listeners share (`RespProtocol`, `pack`, `FailureLog`) is in `resp.py`, so that removing this
module takes nothing `shards` needs. What follows describes `Subscriber`; the same holds per
shard in `shards/`.

One connection, not one per room: Redis sends a subscriber its messages in the order it
executed the PUBLISHes, across all channels, and the recovery design rests on that order
(see `recovery.py`). The listener is an `asyncio.Protocol` fed by the event loop: no task
reads it (see `resp.py`).

Channels are subscribed per room, on the first local socket, and unsubscribed on the last:
a replica receives only what concerns it. `subscribe` returns once Redis has confirmed.

A supervisor keeps it alive: reconnect with capped, jittered backoff, resubscribe every
channel, and a self-check (PING on the connection, and a probe message published through
Redis and expected back) that notices a connection which is open but no longer delivers.

Only a stream that does not parse as RESP is a reason to reconnect. What the application does
with a message is not: an exception raised while one message is handled is logged, counted
(`bus_events_total{event="message_failed"}`) and the next message is handled. Letting it out of
`data_received` would close the connection, and a message published to every replica (a bad
control message) would then make every replica reconnect at once, again at each resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from gateway.bus.endpoint import Endpoint, resolve, tls_context
from gateway.bus.resp import FailureLog, RespProtocol, pack

log = logging.getLogger("gateway.bus")

BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
PING_EVERY = 5.0
REPLY_TIMEOUT = 3.0
SUBSCRIBE_TIMEOUT = 5.0


def _nothing() -> None:
    return None


class Subscriber:
    """Keeps the desired set of channels subscribed, across reconnections."""

    def __init__(
        self,
        endpoint: Endpoint,
        on_message: Callable[[bytes], None],
        *,
        probe_channel: bytes,
        on_connected: Callable[[], Awaitable[None]],
        on_resubscribed: Callable[[], Awaitable[None]],
        on_disconnected: Callable[[], None],
        publish_probe: Callable[[], Awaitable[None]],
        counters: Callable[[str], None],
    ) -> None:
        self.endpoint = endpoint
        self.on_message = on_message
        self.batch_begin: Callable[[], None] = _nothing  # around each read: see engine.begin_batch
        self.batch_end: Callable[[], None] = _nothing
        self.probe_channel = probe_channel
        self.on_connected = on_connected
        self.on_resubscribed = on_resubscribed
        self.on_disconnected = on_disconnected
        self.publish_probe = publish_probe
        self.count = counters
        self.desired: set[bytes] = {probe_channel}
        self.confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._batch: list[bytes] = []
        self._replies: list[asyncio.Future[Any]] = []  # PING and AUTH, in order
        self._proto: RespProtocol | None = None
        self._ready = False  # every desired channel confirmed on this connection: the bus is up
        self._writable = False  # connected and authenticated: SUBSCRIBEs may be sent
        self._announced = False  # on_connected was called for this connection
        self._task: asyncio.Task[None] | None = None
        self._probe_seen = asyncio.Event()
        self._failures = FailureLog(counters)

    @property
    def connected(self) -> bool:
        return self._ready

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="bus-subscriber")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    # -- channels ---------------------------------------------------------------------------

    async def subscribe(self, channel: bytes) -> bool:
        """Subscribe; True once Redis confirmed, False when the bus is down or too slow
        (the channel stays desired and is subscribed on reconnection)."""
        self.desired.add(channel)
        if channel in self.confirmed:
            return True
        if not self._writable:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(channel, [])
        waiters.append(fut)
        if len(waiters) == 1:
            # One SUBSCRIBE for every channel asked in this loop turn (a burst of handshakes).
            self._batch.append(channel)
            if len(self._batch) == 1:
                loop.call_soon(self._send_batch)
        try:
            await asyncio.wait_for(asyncio.shield(fut), SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            self.count("subscribe_timeout")
            return False
        return True

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if batch and self._writable:
            self._send(pack(b"SUBSCRIBE", *batch))

    def unsubscribe(self, channel: bytes) -> None:
        self.desired.discard(channel)
        if channel in self.confirmed:
            self.confirmed.discard(channel)
            if self._writable:
                self._send(pack(b"UNSUBSCRIBE", channel))

    def _send(self, data: bytes) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(data)

    # -- replies ----------------------------------------------------------------------------

    def failed(self, where: str) -> None:
        self._failures.failed(where)

    def on_reply(self, reply: Any) -> None:
        if type(reply) is list:
            kind = reply[0]
            if kind == b"message":
                channel = reply[1]
                if channel == self.probe_channel:
                    self._probe_seen.set()
                else:
                    self.on_message(reply[2])
                return
            if kind == b"subscribe":
                channel = reply[1]
                if channel in self.desired:
                    self.confirmed.add(channel)
                for fut in self._waiters.pop(channel, ()):
                    if not fut.done():
                        fut.set_result(None)
                return
            if kind == b"unsubscribe":
                return
            if kind == b"pong":
                self._resolve_reply(b"PONG")
                return
        self._resolve_reply(reply)

    def _resolve_reply(self, reply: Any) -> None:
        while self._replies:
            fut = self._replies.pop(0)
            if not fut.done():
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(ConnectionError(f"redis: {reply}"))
                else:
                    fut.set_result(reply)
                return

    async def _call(self, *args: bytes) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(fut)
        self._send(pack(*args))
        return await asyncio.wait_for(fut, REPLY_TIMEOUT)

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        first = True
        while True:
            try:
                await self._connect()
                delay = BACKOFF_START
                if not first:
                    self.count("reconnect")
                first = False
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                log.warning("redis pub/sub connection failed: %s; retrying in %.1f s", exc, delay,
                            extra={"endpoint": self.endpoint.describe()})
            self._teardown()
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_CAP)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        if ep.scheme == "unix":
            _, proto = await asyncio.wait_for(
                loop.create_unix_connection(lambda: RespProtocol(self), ep.path), REPLY_TIMEOUT)
        else:
            host, port = await resolve(ep)
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: RespProtocol(self), host, port, ssl=tls_context(ep),
                                       server_hostname=host if ep.tls else None),
                REPLY_TIMEOUT)
        self._proto = proto
        self._replies.clear()
        if ep.password:
            auth = [b"AUTH", ep.password.encode()]
            if ep.username:
                auth.insert(1, ep.username.encode())
            await self._call(*auth)
        if ep.sentinels:
            role = await self._call(b"ROLE")
            if not role or role[0] != b"master":
                raise ConnectionError("the sentinels named a Redis that is not a primary (failover under way)")
        self._announced = True
        await self.on_connected()
        self.confirmed.clear()
        channels = list(self.desired)
        self._writable = True
        for i in range(0, len(channels), 1000):
            self._send(pack(b"SUBSCRIBE", *channels[i:i + 1000]))
        # every channel confirmed, or the connection is not usable (and not ready meanwhile)
        deadline = loop.time() + SUBSCRIBE_TIMEOUT
        while not self.desired <= self.confirmed:
            if proto.lost.done():
                raise ConnectionError("redis closed the connection before confirming the subscriptions")
            if loop.time() > deadline:
                raise ConnectionError("redis did not confirm the subscriptions in time")
            await asyncio.sleep(0.01)
        self._ready = True
        log.info("bus connected", extra={"endpoint": ep.describe(), "channels": len(channels)})
        await self.on_resubscribed()

    async def _watch(self) -> None:
        """Return when the connection is lost or fails its self-check."""
        proto = self._proto
        assert proto is not None
        probes = 0
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proto.lost), PING_EVERY)
            except TimeoutError:
                pass
            else:
                raise ConnectionError("connection lost")
            try:
                await self._call(b"PING")
            except (TimeoutError, ConnectionError):
                self.count("selfcheck_repair")
                raise ConnectionError("no answer to PING on the pub/sub connection") from None
            probes += 1
            if probes % 3 == 0 and not await self._probe():
                self.count("selfcheck_repair")
                raise ConnectionError("a probe published through redis did not come back")

    async def _probe(self) -> bool:
        """Publish on our own probe channel and expect it back: the whole path works."""
        self._probe_seen.clear()
        try:
            # PUBLISH is not allowed on a subscribed connection: the owner's client sends it.
            await self.publish_probe()
            await asyncio.wait_for(self._probe_seen.wait(), REPLY_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            return False
        return True

    def _teardown(self) -> None:
        announced, self._announced = self._announced, False
        self._ready = False
        self._writable = False
        self.confirmed.clear()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._proto = None
        for fut in self._replies:
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
        self._replies.clear()
        if announced:
            self.on_disconnected()
