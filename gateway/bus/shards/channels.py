"""Sharded pub/sub: one subscriber connection per shard that holds channels this replica needs.

Every room's channel is a sharded channel, `socket.io#/notifications#{<room>}#`, whose slot is
the room's (the hash tag). A replica SSUBSCRIBEs a room's channel on the primary that serves
the slot, over one connection per such primary (never one per room), one SSUBSCRIBE command
per channel (CROSSSLOT forbids two slots in one command, even on one node), pipelined. A
single Redis (redis://, rediss://, unix://, redis+sentinel://, Sentinel resolved at each
connection) is the same code with one shard that serves every slot.

    channels = ShardedChannels(parse_cluster_url(url) or parse_endpoint(url), sink,
                               metrics.bus_event, replica_id, names=names)
    channels.start()
    await channels.subscribe(b"socket.io#/notifications#{user:42}#")   # True once confirmed

Each connection is read by a `RespProtocol` (hiredis, no task per connection): the message
body of every `smessage` goes to `sink.on_message`, the messages of one read between
`sink.begin_batch()` and `sink.end_batch()`. Its channels are the sink's business only when
they stop or come back (`ChannelSink`); the broadcast channel (`{*}`) is always desired.

Topology changes are followed without disturbing the other shards:
- Redis pushes `sunsubscribe` for a channel we did not unsubscribe (its slot migrated): the
  channel is lost, the topology refreshed, and the channel subscribed on its new owner;
- a `-MOVED` reply to an SSUBSCRIBE (a FIFO of the commands outstanding on each connection
  says which channel it was for): the new owner is noted, the topology refreshed, the channel
  subscribed there (a channel being restored is lost again first);
- a shard's connection is lost (a primary killed): its channels are lost, the topology is
  refreshed with backoff until their slots are served again (a replica is promoted within
  seconds), and they are subscribed on the new owner(s); meanwhile the shard's connection is
  retried on its own, with capped, jittered backoff;
- a periodic refresh (every REFRESH_EVERY s) finds nodes added and slots moved otherwise: the
  affected channels move. Refreshes are debounced: a burst of events makes one refresh.

Self-check, per shard: PING on its connection, and every PROBE_EVERY pings a probe, SPUBLISHed
on a command connection to the same node on a channel of ours that hashes to one of its slots
(`{__probe:<replica>:<n>}`), expected back on the subscription. A shard that fails it is
reconnected alone.

Readiness: the slot map is known and every shard that holds a desired channel is connected,
with every channel it holds confirmed (a first subscription still in flight excepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, Final, Protocol

import hiredis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from gateway.bus.endpoint import Endpoint, resolve, tls_context
from gateway.bus.subscriber import FailureLog, RespProtocol, pack
from publisher.cluster import AsyncClusterTopology, ClusterModeError, ClusterTarget, NodeAddress, key_slot
from publisher.envelope import EVERYONE, BusNames

log = logging.getLogger("gateway.bus")

BACKOFF_START = 0.1  # a shard's reconnection
BACKOFF_CAP = 5.0
PING_EVERY = 5.0
PROBE_EVERY = 3  # pings
REPLY_TIMEOUT = 3.0
SUBSCRIBE_TIMEOUT = 5.0
REFRESH_EVERY = 10.0  # the periodic topology refresh
REFRESH_DEBOUNCE = 0.05  # events in a burst make one refresh
REFRESH_RETRY_START = 0.1  # while a refresh fails or a shard holding channels is down
REFRESH_RETRY_CAP = 2.0
LOG_EVERY = 10.0  # seconds between two log lines of a repeated failure
PROBE_SEARCH: Final = 50_000  # probe names tried for one shard (a shard of one slot: 95 % found)

# A desired channel's state, as the sink knows it.
NEW: Final = 0  # never confirmed: a first subscription (subscribe() awaits it)
LIVE: Final = 1  # confirmed on its slot's owner
LOST: Final = 2  # not live: channels_lost was said (or subscribe returned False): owed a restore
RESTORING: Final = 3  # channels_restoring was said, SSUBSCRIBE sent on its owner's connection

# What each command outstanding on a connection was, in order.
_SSUB: Final = 0
_SUNSUB: Final = 1
_CALL: Final = 2

Where = Endpoint | ClusterTarget
Node = Hashable  # NodeAddress (a cluster's primary) or the Endpoint of a single Redis


class ChannelSink(Protocol):
    """What the bus's channels tell the delivery core."""

    def on_message(self, raw: bytes) -> None:
        """The body of a message received on any desired channel (never a probe's)."""

    def begin_batch(self) -> None:
        """A read of messages begins: their writes leave together at its end."""

    def end_batch(self) -> None: ...

    def channels_lost(self, channels: list[bytes]) -> None:
        """Their connection went down, or they are moving to another shard: live messages may
        be missed until they are restored."""

    def channels_restoring(self, channels: list[bytes]) -> None:
        """They are about to be (re)subscribed: hold their sockets' live events."""

    async def channels_restored(self, channels: list[bytes]) -> None:
        """Confirmed again, on their slot's current owner: catch up from history and release."""


class _Refused(ConnectionError):
    """The node cannot serve us as configured (a plain URL at a cluster node...)."""


def _shard_name(node: Node) -> str:
    """host:port (a single Redis: its address, socket or Sentinel service); never credentials."""
    if isinstance(node, NodeAddress):
        return str(node)
    assert isinstance(node, Endpoint)
    if node.scheme == "unix":
        return f"unix:{node.path}"
    if node.sentinels:
        return node.describe()
    return str(NodeAddress(node.host, node.port))


def _node_tls(node: NodeAddress) -> ssl.SSLContext | None:
    """An SSL context from a cluster node's ssl_* options, as redis-py reads them."""
    if not node.tls:
        return None
    options = dict(node.tls_options)
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    requirement = options.get("ssl_cert_reqs", "required")
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and requirement == "required"
    if requirement == "none":
        context.verify_mode = ssl.CERT_NONE
    elif requirement == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


class _Shard:
    """One node's subscriber connection: its supervisor, its outstanding commands, its reads."""

    def __init__(self, owner: ShardedChannels, node: Node) -> None:
        self.owner = owner
        self.node = node
        self.name = _shard_name(node)
        self.slots: set[int] = set()  # the slots whose desired channels are held here
        self.confirmed: set[bytes] = set()  # on this connection
        self.sent: set[bytes] = set()  # SSUBSCRIBE outstanding on this connection
        self.fifo: deque[tuple[int, Any]] = deque()
        self.queue: list[bytes] = []  # to SSUBSCRIBE at the end of this loop turn
        self.proto: RespProtocol | None = None
        self.writable = False  # connected and authenticated: SSUBSCRIBEs may be sent
        self.settled = False  # what was sent at connection is answered
        self.failing = False  # the last attempt failed: down until a connection succeeds
        self.probe: bytes | None = None
        self.probe_seen = asyncio.Event()
        self.command: redis.asyncio.Redis | None = None  # a single Redis: to publish the probe
        self.task: asyncio.Task[None] | None = None
        self.lost: list[bytes] = []  # during a read: said at its end
        self.restored: list[bytes] = []
        self.on_message = owner.sink.on_message
        self.batch_begin = owner.sink.begin_batch

    @property
    def ready(self) -> bool:
        return self.writable and self.settled

    def __repr__(self) -> str:
        return f"<shard {self.name} ready={self.ready} slots={len(self.slots)}>"

    # -- reading (RespProtocol's owner) -----------------------------------------------------

    def on_reply(self, reply: Any) -> None:
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == b"smessage":
                if reply[1] == self.probe:
                    self.probe_seen.set()
                else:
                    self.on_message(reply[2])
                return
            if kind == b"ssubscribe":
                channel = reply[1]
                self._answered(_SSUB, channel)
                self.owner._confirmed(self, channel)
                return
            if kind == b"sunsubscribe":
                channel = reply[1]
                fifo = self.fifo
                if fifo and fifo[0][0] == _SUNSUB and fifo[0][1] == channel:
                    fifo.popleft()
                else:  # not ours: Redis dropped the channel (its slot moved away)
                    self.owner._pushed_out(self, channel)
                return
            if kind == b"pong":
                reply = b"PONG"
        if not self.fifo:
            log.warning("bus shard %s: a reply nobody asked for: %.100r", self.name, reply,
                        extra={"shard": self.name})
            return
        what, arg = self.fifo.popleft()
        if what == _CALL:
            if not arg.done():
                if isinstance(reply, hiredis.ReplyError):
                    arg.set_exception(ResponseError(str(reply)))
                else:
                    arg.set_result(reply)
        elif what == _SSUB:
            self.sent.discard(arg)
            if isinstance(reply, hiredis.ReplyError):
                self.owner._refused(self, arg, str(reply))
            else:
                log.warning("bus shard %s: SSUBSCRIBE answered %.100r", self.name, reply, extra={"shard": self.name})
        # _SUNSUB answered by an error (MOVED: the slot had left): nothing to undo

    def _answered(self, what: int, channel: bytes) -> None:
        fifo = self.fifo
        if fifo and fifo[0][0] == what and fifo[0][1] == channel:
            fifo.popleft()
            return
        for i, entry in enumerate(fifo):
            if entry[0] == what and entry[1] == channel:
                del fifo[i]
                return

    def batch_end(self) -> None:
        try:
            self.owner.sink.end_batch()
        finally:
            self.owner._after_read(self)

    def failed(self, where: str) -> None:
        self.owner._failures.failed(where, shard=self.name)

    # -- writing ----------------------------------------------------------------------------

    def call(self, *args: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto = self.proto
        if proto is None or not proto.write(pack(*args)):
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self.fifo.append((_CALL, fut))
        return fut

    def ssubscribe(self, channels: Iterable[bytes]) -> None:
        proto = self.proto
        if proto is None or not self.writable:
            return
        out = []
        for channel in channels:
            out.append(pack(b"SSUBSCRIBE", channel))
            self.fifo.append((_SSUB, channel))
            self.sent.add(channel)
        if out:
            proto.write(b"".join(out))

    def sunsubscribe(self, channel: bytes) -> None:
        self.confirmed.discard(channel)
        self.sent.discard(channel)
        proto = self.proto
        if proto is not None and self.writable and proto.write(pack(b"SUNSUBSCRIBE", channel)):
            self.fifo.append((_SUNSUB, channel))

    def _on_lost(self, _: object) -> None:
        for what, arg in self.fifo:
            if what == _CALL and not arg.done():
                arg.set_exception(ConnectionError("connection lost"))

    # -- supervision ------------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._supervise(), name=f"bus-shard {self.name}")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.owner._shard_down(self, closing=True)
        await self._close_command()

    async def _close_command(self) -> None:
        command, self.command = self.command, None
        if command is not None:
            with contextlib.suppress(RedisError, OSError):
                await command.aclose()

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        connections = 0
        try:
            while True:
                try:
                    await self._connect()
                    self.owner._shard_up(self)
                    # replies come in order: once this one is in, every SSUBSCRIBE sent is answered
                    await asyncio.wait_for(self.call(b"PING"), SUBSCRIBE_TIMEOUT)
                    self.settled = True
                    self.failing = False
                    connections += 1
                    if connections > 1:
                        self.owner.count("reconnect")
                    delay = BACKOFF_START
                    log.info("bus shard %s connected (%d channels)", self.name, len(self.confirmed),
                             extra={"shard": self.name})
                    self.owner._shard_settled(self)
                    await self._watch()
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    self.owner._log_failure(self, "no answer in time", delay)
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    self.owner._log_failure(self, str(exc) or type(exc).__name__, delay)
                self.failing = True
                self.owner._shard_down(self)
                await self._close_command()
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, BACKOFF_CAP)
        finally:
            if self.proto is not None and self.proto.transport is not None:
                self.proto.transport.abort()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        node = self.node
        if isinstance(node, NodeAddress):
            host, port, path = node.host, node.port, ""
            context = self.owner._tls(node)
            username, password = node.username, node.password
        else:
            assert isinstance(node, Endpoint)
            path = node.path if node.scheme == "unix" else ""
            host, port = await resolve(node) if not path else ("", 0)
            context = tls_context(node)
            username, password = node.username, node.password
        if path:
            _, proto = await asyncio.wait_for(
                loop.create_unix_connection(lambda: RespProtocol(self), path), REPLY_TIMEOUT)
        else:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: RespProtocol(self), host, port, ssl=context,
                                       server_hostname=host if context is not None else None),
                REPLY_TIMEOUT)
        self.proto = proto
        self.fifo.clear()
        proto.lost.add_done_callback(self._on_lost)
        auth = None
        if password:
            auth = self.call(b"AUTH", username.encode(), password.encode()) if username else \
                self.call(b"AUTH", password.encode())
        named = self.call(b"CLIENT", b"SETNAME", self.owner.client_name)
        single = not isinstance(node, NodeAddress)
        info = self.call(b"INFO", b"cluster") if single else None
        sentinel = isinstance(node, Endpoint) and bool(node.sentinels)
        role = self.call(b"ROLE") if sentinel else None
        if auth is not None:
            try:
                await asyncio.wait_for(auth, REPLY_TIMEOUT)
            except ResponseError as exc:
                raise _Refused(f"AUTH refused: {exc}") from None
        with contextlib.suppress(ResponseError):  # a managed Redis may refuse CLIENT SETNAME
            await asyncio.wait_for(named, REPLY_TIMEOUT)
        if info is not None:
            try:
                text = await asyncio.wait_for(info, REPLY_TIMEOUT)
            except ResponseError:  # INFO renamed or refused: a MOVED would tell
                text = b""
            if isinstance(text, bytes) and b"cluster_enabled:1" in text:
                self.owner._cluster_node(self)
                raise _Refused(f"{self.name} is a Redis Cluster node: use a redis+cluster:// URL")
        if role is not None:
            reply = await asyncio.wait_for(role, REPLY_TIMEOUT)
            if not reply or reply[0] != b"master":
                raise ConnectionError("the sentinels named a Redis that is not a primary (failover under way)")
        if single:
            self.command = redis.asyncio.Redis(
                host=host or "localhost", port=port or 6379, unix_socket_path=path or None,
                username=username, password=password, ssl=context is not None,
                socket_timeout=REPLY_TIMEOUT, socket_connect_timeout=REPLY_TIMEOUT, retry=Retry(NoBackoff(), 0))

    async def _watch(self) -> None:
        """Return (raise) when the connection is lost or fails its self-check."""
        proto = self.proto
        assert proto is not None
        pings = 0
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proto.lost), PING_EVERY)
            except TimeoutError:
                pass
            else:
                raise ConnectionError("connection lost")
            try:
                await asyncio.wait_for(self.call(b"PING"), REPLY_TIMEOUT)
            except (TimeoutError, ConnectionError, ResponseError):
                self.owner.count("selfcheck_repair")
                raise ConnectionError("no answer to PING on the pub/sub connection") from None
            pings += 1
            if pings % PROBE_EVERY == 0 and await self._probe() is False:
                self.owner.count("selfcheck_repair")
                raise ConnectionError("a probe published through redis did not come back")

    async def _probe(self) -> bool | None:
        """SPUBLISH on our probe channel (on a command connection to this node) and expect it
        back on the subscription: True, False (deaf), None (could not tell: no probe now)."""
        probe = self.probe
        if probe is None or probe not in self.confirmed:
            return None
        client = self.command if self.command is not None else self.owner._client(self.node)
        if client is None:
            return None
        self.probe_seen.clear()
        try:
            receivers = await asyncio.wait_for(
                client.execute_command("SPUBLISH", probe, b"probe"), REPLY_TIMEOUT)  # type: ignore[no-untyped-call]
        except ResponseError as exc:  # MOVED: the slot moved; the refresh will pick another probe
            log.info("bus shard %s: the probe was refused: %s", self.name, exc, extra={"shard": self.name})
            self.owner._want_refresh()
            return None
        except (TimeoutError, RedisError, OSError):
            return False
        if not receivers:
            return False
        try:
            await asyncio.wait_for(self.probe_seen.wait(), REPLY_TIMEOUT)
        except TimeoutError:
            return False
        return True


class ShardedChannels:
    """The desired channels of this replica, each subscribed on its slot's owner.

    `where`: a single Redis (`Endpoint`) or a cluster (`ClusterTarget`); `sink`: see
    `ChannelSink`; `counters`: the bus incident counter (`bus_events_total{event=...}`);
    `replica_id`: names our probe channels and our connections (CLIENT SETNAME ngw-sub:<id>).
    """

    def __init__(self, where: Where, sink: ChannelSink, counters: Callable[[str], None], replica_id: str,
                 *, names: BusNames | None = None) -> None:
        self.sink = sink
        self.count = counters
        self.names = names or BusNames()
        safe_id = "".join(c if c.isprintable() and c not in " {}" else "_" for c in replica_id) or "_"
        self.replica_id = safe_id
        self.client_name = f"ngw-sub:{safe_id}".encode()
        self.broadcast = self.names.room_channel(EVERYONE).encode()
        self._single: Endpoint | None = None
        self._target: ClusterTarget | None = None
        self._topology: AsyncClusterTopology | None = None
        if isinstance(where, ClusterTarget):
            self._target = where
            self._topology = AsyncClusterTopology(where)
        elif isinstance(where, Endpoint):
            self._single = where
        else:
            raise TypeError(f"where the bus is: an Endpoint or a ClusterTarget, not {where!r}")
        self._state: dict[bytes, int] = {}
        self._slot: dict[bytes, int] = {}
        self._by_slot: dict[int, set[bytes]] = {}
        self._home: dict[int, _Shard] = {}  # slot -> the shard holding its channels
        self._shards: dict[Node, _Shard] = {}
        self._waiters: dict[bytes, list[asyncio.Future[bool]]] = {}
        self._unsettled: set[bytes] = set()  # desired, not live, and readiness waits for them
        self._hints: dict[int, NodeAddress] = {}  # slot -> its owner, as a MOVED said
        self._tls_contexts: dict[NodeAddress, ssl.SSLContext | None] = {}
        self._loaded = False
        self._closed = False
        self._started = False
        self._refresh_wanted: asyncio.Event | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # channels_restored calls
        self._stopping: set[asyncio.Task[None]] = set()  # shards left without channels, closing
        self._failures = FailureLog(counters)
        self._next_log: dict[str, float] = {}
        self._add(self.broadcast)
        self._unsettled.add(self.broadcast)

    # -- the API ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Ready: the slot map is known, and every shard holding a desired channel (the
        broadcast channel's always) is connected with every channel it holds confirmed."""
        if not self._loaded or self._unsettled or self._closed:
            return False
        return all(shard.ready for shard in self._shards.values() if shard.slots)

    def shards(self) -> dict[str, bool]:
        """Each shard's readiness, by host:port."""
        behind = {self._home.get(self._slot[ch]) for ch in self._unsettled}
        return {shard.name: shard.ready and shard not in behind for shard in self._shards.values()}

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._refresh_wanted = asyncio.Event()
        if self._single is not None:
            self._loaded = True
            self._reconcile()
        else:
            self._refresh_wanted.set()
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="bus-topology")

    async def close(self) -> None:
        self._closed = True
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.stop()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(False)
        if self._topology is not None:
            await self._topology.close()

    async def subscribe(self, channel: bytes) -> bool:
        """True once Redis confirmed the subscription on the channel's current owner. False
        when the bus is down or too slow: the channel stays desired, and is subscribed when it
        can be (then announced as restoring and restored)."""
        state = self._state.get(channel)
        if state == LIVE:
            return True
        if self._closed:
            return False
        if state is None:
            self._add(channel)
        slot = self._slot[channel]
        shard = self._home.get(slot) or self._place(slot)
        if shard is None or shard.failing or not self._started:
            self._owe(channel)
            return False
        if shard.writable and channel not in shard.sent and channel not in shard.confirmed:
            self._queue(shard, channel)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(channel, [])
        waiters.append(fut)
        confirmed = False
        try:
            confirmed = await asyncio.wait_for(asyncio.shield(fut), SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            self.count("subscribe_timeout")
        finally:
            waiters = self._waiters.get(channel, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(channel, None)
            if not confirmed and not waiters and channel in self._state:
                self._owe(channel)
        return confirmed

    def unsubscribe(self, channel: bytes) -> None:
        if channel == self.broadcast:
            return
        state = self._state.pop(channel, None)
        if state is None:
            return
        slot = self._slot.pop(channel)
        self._unsettled.discard(channel)
        for fut in self._waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(False)
        chans = self._by_slot.get(slot)
        if chans is not None:
            chans.discard(channel)
        shard = self._home.get(slot)
        if not chans:
            self._by_slot.pop(slot, None)
            if shard is not None:
                del self._home[slot]
                shard.slots.discard(slot)
        if shard is not None and channel in shard.confirmed:
            shard.sunsubscribe(channel)
        # one in flight: its confirmation finds it undesired and unsubscribes it

    # -- channels and their shards ----------------------------------------------------------

    def _add(self, channel: bytes) -> None:
        slot = key_slot(channel)
        self._state[channel] = NEW
        self._slot[channel] = slot
        self._by_slot.setdefault(slot, set()).add(channel)

    def _owner_of(self, slot: int) -> Node | None:
        if self._single is not None:
            return self._single
        if not self._loaded or self._topology is None:
            return None
        return self._topology.node_for_slot(slot)

    def _place(self, slot: int) -> _Shard | None:
        node = self._owner_of(slot)
        if node is None:
            return None
        shard = self._shard_for(node)
        self._home[slot] = shard
        shard.slots.add(slot)
        return shard

    def _shard_for(self, node: Node) -> _Shard:
        shard = self._shards.get(node)
        if shard is None:
            shard = self._shards[node] = _Shard(self, node)
            if self._started and not self._closed:
                shard.start()
        return shard

    def _owe(self, channel: bytes) -> None:
        """A first subscription that did not go through: restored when it does."""
        if self._state.get(channel) == NEW:
            self._state[channel] = LOST
            self._unsettled.add(channel)

    def _queue(self, shard: _Shard, channel: bytes) -> None:
        """SSUBSCRIBE at the end of this loop turn, with the others asked meanwhile."""
        shard.queue.append(channel)
        if len(shard.queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush_queue, shard)

    def _flush_queue(self, shard: _Shard) -> None:
        queued, shard.queue = shard.queue, []
        wanted = [ch for ch in dict.fromkeys(queued)
                  if ch in self._state and self._home.get(self._slot[ch]) is shard
                  and ch not in shard.sent and ch not in shard.confirmed]
        self._send(shard, wanted)

    def _send(self, shard: _Shard, channels: list[bytes]) -> None:
        """SSUBSCRIBE `channels` on `shard`; those owed a restore are announced restoring first."""
        if not channels or not shard.writable:
            return
        state = self._state
        restoring = [ch for ch in channels if state.get(ch) == LOST]
        for ch in restoring:
            state[ch] = RESTORING
        if restoring:
            self._tell("channels_restoring", restoring)
        shard.ssubscribe(channels)

    def _sync(self, shard: _Shard) -> None:
        """Subscribe what `shard` holds and is not subscribed (nor in flight) there."""
        if not shard.writable:
            return
        missing = [ch for slot in shard.slots for ch in self._by_slot.get(slot, ())
                   if ch not in shard.confirmed and ch not in shard.sent]
        probe = self._probe_for(shard)
        if probe is not None and probe not in shard.confirmed and probe not in shard.sent:
            missing.append(probe)
        self._send(shard, missing)

    def _probe_for(self, shard: _Shard) -> bytes | None:
        """The shard's probe channel: kept while its slot is the shard's, else found anew."""
        def owned(channel: bytes) -> bool:
            return self._owner_of(key_slot(channel)) == shard.node

        if shard.probe is not None and owned(shard.probe):
            return shard.probe
        if shard.probe is not None:
            old, shard.probe = shard.probe, None
            if old in shard.confirmed:
                shard.sunsubscribe(old)
            shard.sent.discard(old)
        if self._single is not None:
            shard.probe = self.names.room_channel(f"__probe:{self.replica_id}:0").encode()
            return shard.probe
        if self._topology is None or not self._loaded:
            return None
        mine = {slot for slot, node in enumerate(self._topology.table()) if node == shard.node}
        if not mine:
            return None
        for n in range(PROBE_SEARCH):
            channel = self.names.room_channel(f"__probe:{self.replica_id}:{n}").encode()
            if key_slot(channel) in mine:
                shard.probe = channel
                return channel
        return None

    # -- what the connections say ----------------------------------------------------------

    def _shard_up(self, shard: _Shard) -> None:
        """Connected and authenticated: subscribe everything it holds, and its probe."""
        shard.writable = True
        shard.settled = False
        shard.confirmed.clear()
        shard.sent.clear()
        self._sync(shard)

    def _shard_settled(self, shard: _Shard) -> None:
        if self.connected:
            log.info("bus ready", extra={"shards": len(self._shards)})

    def _shard_down(self, shard: _Shard, *, closing: bool = False) -> None:
        """Its connection is gone (or closed): its channels are lost, the map may have changed."""
        was = (shard.writable or shard.proto is not None) and not closing
        shard.writable = False
        shard.settled = False
        state = self._state
        held = shard.confirmed | shard.sent
        shard.confirmed.clear()
        shard.sent.clear()
        shard.queue.clear()
        for what, arg in shard.fifo:
            if what == _CALL and not arg.done():
                arg.set_exception(ConnectionError("connection lost"))
        shard.fifo.clear()
        proto, shard.proto = shard.proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        lost = [ch for ch in held if state.get(ch) in (LIVE, RESTORING)
                and self._home.get(self._slot[ch]) is shard]
        for ch in lost:
            state[ch] = LOST
            self._unsettled.add(ch)
        if self._closed:
            return
        if lost:
            log.warning("bus shard %s down: %d channels lost until it is back", shard.name, len(lost),
                        extra={"shard": shard.name})
            self._tell("channels_lost", lost)
        if was and self._topology is not None and isinstance(shard.node, NodeAddress):
            self._topology.suspect(shard.node)
            self._want_refresh()

    def _confirmed(self, shard: _Shard, channel: bytes) -> None:
        shard.sent.discard(channel)
        if channel == shard.probe:
            shard.confirmed.add(channel)
            return
        state = self._state.get(channel)
        if state is None or self._home.get(self._slot[channel]) is not shard:
            shard.sunsubscribe(channel)  # unsubscribed or moved meanwhile
            return
        shard.confirmed.add(channel)
        if state == LIVE:
            return
        if state == LOST:  # owed (its subscribe() gave up) while its SSUBSCRIBE was in flight
            self._tell("channels_restoring", [channel])
            state = RESTORING
        if state == RESTORING:
            shard.restored.append(channel)
        self._state[channel] = LIVE
        self._unsettled.discard(channel)
        for fut in self._waiters.get(channel, ()):
            if not fut.done():
                fut.set_result(True)

    def _pushed_out(self, shard: _Shard, channel: bytes) -> None:
        """Redis unsubscribed us from `channel` (its slot migrated away from the node)."""
        if channel not in shard.confirmed:
            return  # an old answer: it is no longer subscribed here anyway
        shard.confirmed.discard(channel)
        self.count("slot_moved")
        self._want_refresh()
        if channel == shard.probe:
            return
        if self._state.get(channel) == LIVE and self._home.get(self._slot[channel]) is shard:
            self._state[channel] = LOST
            self._unsettled.add(channel)
            shard.lost.append(channel)

    def _refused(self, shard: _Shard, channel: bytes, error: str) -> None:
        """An SSUBSCRIBE answered by an error: MOVED (another node serves the slot) or other."""
        if error.startswith("MOVED "):
            self.count("moved")
            if self._single is not None:  # a plain URL at a cluster node: never ready
                self._cluster_node(shard)
                if shard.proto is not None and shard.proto.transport is not None:
                    shard.proto.transport.abort()
                return
            _, slot_text, address = [*error.split(), "", ""][:3]
            host, _, port = address.rpartition(":")
            if slot_text.isdigit() and port.isdigit() and self._target is not None:
                node = shard.node
                assert isinstance(node, NodeAddress)
                self._hints[int(slot_text)] = self._target.node(host.strip("[]") or node.host, int(port))
            self._want_refresh()
        else:
            self.count("subscribe_refused")
            hint = " (sharded pub/sub needs Redis >= 7.0)" if "unknown command" in error.lower() else ""
            self._log_limited("refused", logging.ERROR, "bus shard %s refused SSUBSCRIBE: %s%s",
                              shard.name, error, hint, shard=shard.name)
        if channel != shard.probe and self._state.get(channel) == RESTORING \
                and self._home.get(self._slot[channel]) is shard:
            self._state[channel] = LOST  # lost again: held sockets are let go until it is back
            shard.lost.append(channel)

    def _after_read(self, shard: _Shard) -> None:
        lost, shard.lost = shard.lost, []
        restored, shard.restored = shard.restored, []
        if lost:
            log.info("bus shard %s: %d channels moving", shard.name, len(lost), extra={"shard": shard.name})
            self._tell("channels_lost", lost)
        if restored:
            live = [ch for ch in restored if self._state.get(ch) == LIVE]
            if live:
                self._spawn(self._restored(live))

    async def _restored(self, channels: list[bytes]) -> None:
        try:
            await self.sink.channels_restored(channels)
        except Exception:  # the sink's failure is not the bus's
            self.count("sink_failed")
            log.exception("the bus sink failed in channels_restored")

    def _tell(self, what: str, channels: list[bytes]) -> None:
        try:
            getattr(self.sink, what)(channels)
        except Exception:  # the sink's failure is not the bus's
            self.count("sink_failed")
            log.exception("the bus sink failed in %s", what)

    def _cluster_node(self, shard: _Shard) -> None:
        """A plain URL that leads to a Redis Cluster node: never ready (and said why)."""
        self.count("cluster_mode")
        node = shard.node
        scheme = "rediss+cluster" if isinstance(node, Endpoint) and node.tls else "redis+cluster"
        self._log_limited("cluster", logging.ERROR,
                          "%s is a Redis Cluster node (cluster_enabled:1): a plain URL reaches that node's "
                          "slots only; write %s://%s (add more nodes after a comma)",
                          shard.name, scheme, shard.name, shard=shard.name)

    # -- the topology -----------------------------------------------------------------------

    def _want_refresh(self) -> None:
        """Refresh the slot map soon (one refresh for a burst), then put every channel where
        it belongs. A single Redis has no map: its channels are subscribed again at once."""
        if self._closed or self._refresh_wanted is None:
            return
        if self._single is None:
            self._refresh_wanted.set()
        elif not self._refresh_wanted.is_set():
            self._refresh_wanted.set()
            asyncio.get_running_loop().call_soon(self._resync)

    def _resync(self) -> None:
        assert self._refresh_wanted is not None
        self._refresh_wanted.clear()
        if not self._closed:
            self._reconcile()

    async def _refresh_loop(self) -> None:
        wanted = self._refresh_wanted
        assert wanted is not None
        assert self._topology is not None
        delay = REFRESH_RETRY_START
        while True:
            if not wanted.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wanted.wait(), REFRESH_EVERY)
            await asyncio.sleep(REFRESH_DEBOUNCE)
            wanted.clear()
            ok = False
            try:
                await self._topology.refresh()
                ok = True
            except ClusterModeError as exc:
                self.count("cluster_mode")
                self._log_limited("topology", logging.ERROR, "bus: %s", exc)
            except Exception as exc:  # noqa: BLE001 - retried with backoff
                self.count("topology_refresh_failed")
                self._log_limited("topology", logging.WARNING, "bus: the cluster's slot map could not be read: %s",
                                  exc)
            if ok:
                try:
                    self._apply_hints()
                    self._loaded = True
                    self._reconcile()
                except Exception:  # a bug here must not stop the following of the topology
                    ok = False
                    log.exception("bus: following the cluster's new slot map failed")
            if ok and not self._degraded():
                delay = REFRESH_RETRY_START
                continue
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, REFRESH_RETRY_CAP)
            wanted.set()

    def _apply_hints(self) -> None:
        hints, self._hints = self._hints, {}
        topology = self._topology
        assert topology is not None
        for slot, node in hints.items():
            if topology.node_for_slot(slot) != node:
                topology.assign(slot, node)

    def _degraded(self) -> bool:
        """A shard holding channels is down, or a channel has no shard: refresh again soon."""
        if any(shard.slots and not shard.writable for shard in self._shards.values()):
            return True
        return any(self._slot[ch] not in self._home for ch in self._unsettled)

    def _reconcile(self) -> None:
        """Put every slot's channels on the slot's owner as the map says now; subscribe what
        is missing; close the shards left without channels."""
        moved: list[bytes] = []
        state = self._state
        for slot, channels in self._by_slot.items():
            node = self._owner_of(slot)
            old = self._home.get(slot)
            if node is None or (old is not None and old.node == node):
                continue
            new = self._shard_for(node)
            if old is not None:
                old.slots.discard(slot)
            self._home[slot] = new
            new.slots.add(slot)
            for ch in channels:
                if old is not None:
                    if ch in old.confirmed:
                        old.sunsubscribe(ch)
                    old.sent.discard(ch)  # its answer there finds it moved
                if state[ch] in (LIVE, RESTORING):
                    state[ch] = LOST
                    self._unsettled.add(ch)
                    moved.append(ch)
        if moved:
            log.info("bus: %d channels move to another shard", len(moved))
            self._tell("channels_lost", moved)
        for shard in list(self._shards.values()):
            if not shard.slots:
                del self._shards[shard.node]
                log.info("bus shard %s: no channel left, closed", shard.name, extra={"shard": shard.name})
                self._spawn(shard.stop(), self._stopping)
            else:
                self._sync(shard)

    # -- helpers ----------------------------------------------------------------------------

    def _tls(self, node: NodeAddress) -> ssl.SSLContext | None:
        if node not in self._tls_contexts:
            self._tls_contexts[node] = _node_tls(node)
        return self._tls_contexts[node]

    def _client(self, node: Node) -> redis.asyncio.Redis | None:
        """A command client to a cluster node (the topology's)."""
        if self._topology is None or not isinstance(node, NodeAddress):
            return None
        return self._topology.client(node)

    def _spawn(self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]] | None = None) -> None:
        into = self._tasks if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)

    def _log_failure(self, shard: _Shard, why: str, delay: float) -> None:
        self._log_limited(f"shard {shard.name}", logging.WARNING,
                          "bus shard %s: connection failed: %s; retrying in %.1f s", shard.name, why, delay,
                          shard=shard.name)

    def _log_limited(self, key: str, level: int, message: str, *args: object, **extra: Any) -> None:
        """Log at most once every LOG_EVERY seconds per `key` (a failure repeated while a node
        is down would flood the log)."""
        now = time.monotonic()
        if now < self._next_log.get(key, 0.0):
            return
        self._next_log[key] = now + LOG_EVERY
        log.log(level, message, *args, extra=extra or None)
