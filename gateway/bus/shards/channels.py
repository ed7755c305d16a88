"""`ShardedChannels`, the sharded listener's public face, and `ChannelSink`, what it tells.

`ShardedChannels` keeps the desired channels of this replica (`subscribe`, `unsubscribe`),
each in a state the sink knows (`state.py`), and says when they are lost, restoring and
restored; it is ready (`connected`) when every shard holding one is. The rest is done by the
parts it owns, each in its module: one connection per shard (`connection.py`), their
self-check (`selfcheck.py`), the following of the cluster's topology (`topology.py`). The
package's docstring (`shards/__init__.py`) tells the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import redis.asyncio

from gateway.bus.endpoint import Endpoint
from gateway.bus.resp import FailureLog
from gateway.bus.shards import selfcheck, topology, tuning
from gateway.bus.shards.connection import Node, _node_tls, _Shard
from gateway.bus.shards.state import LIVE, LOST, NEW, RESTORING
from publisher.cluster import AsyncClusterTopology, ClusterTarget, NodeAddress, key_slot
from publisher.envelope import EVERYONE, BusNames

log = logging.getLogger("gateway.bus")

Where = Endpoint | ClusterTarget


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
            topology.reconcile(self)
        else:
            self._refresh_wanted.set()
            self._refresher = asyncio.get_running_loop().create_task(topology.refresh_loop(self),
                                                                     name="bus-topology")

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
        shard = self._home.get(slot) or topology.place(self, slot)
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
            confirmed = await asyncio.wait_for(asyncio.shield(fut), tuning.SUBSCRIBE_TIMEOUT)
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
        probe = selfcheck.probe_channel(self, shard)
        if probe is not None and probe not in shard.confirmed and probe not in shard.sent:
            missing.append(probe)
        self._send(shard, missing)

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

    # What a shard reports that may mean the topology changed: see `topology.py`.

    def _shard_down(self, shard: _Shard, *, closing: bool = False) -> None:
        topology.shard_down(self, shard, closing=closing)

    def _pushed_out(self, shard: _Shard, channel: bytes) -> None:
        topology.pushed_out(self, shard, channel)

    def _refused(self, shard: _Shard, channel: bytes, error: str) -> None:
        topology.refused(self, shard, channel, error)

    def _want_refresh(self) -> None:
        topology.want_refresh(self)

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
        self._next_log[key] = now + tuning.LOG_EVERY
        log.log(level, message, *args, extra=extra or None)
