"""The bus on Redis: a single node, Sentinel or a Redis Cluster, through one code path.

Pub/sub is sharded (`shards.ShardedChannels`: one connection per shard holding this replica's
rooms, following slot moves and failovers); a single Redis is a cluster of one shard. Commands
are Lua scripts sent through the publisher's transports (`publisher.transports`: packed once,
kept connections, EVAL on NOSCRIPT, bounded retries; on a cluster, routed by slot and pipelined
per shard). Every script touches one slot: a room's stream and channel, or one user's sessions
and presence, which carry the room `user:<id>` as their hash tag.

Writes that nobody waits for (session records, presence) go through a `WriteQueue`: once per
event-loop turn, one script call per slot, in order, sent again when the bus refused them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.bus.contract import BusSink, BusUnavailable, Entries, Span
from gateway.bus.endpoint import parse_endpoint
from gateway.bus.shards import ShardedChannels
from gateway.bus.write_queue import WriteQueue
from publisher.async_sender import AsyncSender
from publisher.cluster import ClusterModeError, async_expect_standalone, is_cluster_url, parse_cluster_url
from publisher.commands import Call, Commands
from publisher.envelope import (
    EVERYONE,
    REPLICA_HEARTBEAT_MS,
    REPLICA_TTL_MS,
    BusNames,
    EnvelopeError,
    Position,
    parse_position,
)
from publisher.errors import PublisherError
from publisher.redis_url import async_client
from publisher.scripts import POSITION, Script
from publisher.session import FIELDS, SessionRecord
from publisher.transports import AsyncRunner, async_transport

log = logging.getLogger("gateway.bus")

FULL_BEAT_EVERY = 6  # beats: sessions and presence are refreshed every 30 s
PRESENCE_TTL_MS = 3 * FULL_BEAT_EVERY * REPLICA_HEARTBEAT_MS
# A connected session's record outlives two full beats, so it never expires while connected.
CONNECTED_SESSION_SLACK_MS = 2 * REPLICA_HEARTBEAT_MS * FULL_BEAT_EVERY
# Recoverable sessions kept per user; past it the oldest are evicted (a client that opens and
# drops transports in a loop cannot fill Redis).
MAX_SESSIONS_PER_USER = 100
HISTORY_READ_MAX = 100_000  # entries one replay reads at most (a stream holds ~HISTORY_MAX_LEN)
# Command round trips in flight at once. redis-py's asyncio pool holds at most 100 connections
# (per node) and, past them, fails the call ("Too many connections") rather than wait: a
# reconnect storm starts hundreds of recoveries at once, and each would come back
# `recovered: false` for nothing. Waiting here for a turn costs the client microseconds.
MAX_CALLS_IN_FLIGHT = 64
# The fields the "S" operation of writes.lua takes after pid and user, in its order.
SAVED_FIELDS = ("sid", "rooms", "starts", "left", "extra", "created", "alive")

HISTORY, SESSIONS, HEARTBEAT, WRITES = (
    Script.load(name, "gateway.bus") for name in ("history.lua", "sessions.lua", "heartbeat.lua", "writes.lua"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Channels:
    """The sink of the sharded channels, speaking rooms to the delivery core."""

    def __init__(self, names: BusNames) -> None:
        self.sink: BusSink | None = None
        self._head = names.channel_head().encode()

    def room(self, channel: bytes) -> str:
        return channel[len(self._head):-2].decode()

    def on_message(self, raw: bytes) -> None:
        if self.sink is not None:
            self.sink.on_message(raw)

    def begin_batch(self) -> None:
        if self.sink is not None:
            self.sink.begin_batch()

    def end_batch(self) -> None:
        if self.sink is not None:
            self.sink.end_batch()

    def channels_lost(self, channels: list[bytes]) -> None:
        if self.sink is not None:
            self.sink.channels_lost([self.room(c) for c in channels])

    def channels_restoring(self, channels: list[bytes]) -> None:
        if self.sink is not None:
            self.sink.channels_restoring([self.room(c) for c in channels])

    async def channels_restored(self, channels: list[bytes]) -> None:
        if self.sink is not None:
            await self.sink.channels_restored([self.room(c) for c in channels])


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, *, names: BusNames, replica_id: str, history_max_len: int,
                 window_s: float, max_payload_bytes: int, metrics: Any) -> None:
        self.names = names
        self.replica_id = replica_id
        self._url = url
        self._window_ms = int(window_s * 1000)
        self._lifetime_ms = max(2 * self._window_ms, 1000)
        self._metrics = metrics
        self._commands = Commands(names, history_max_len=history_max_len, recovery_window_s=window_s,
                                  max_payload_bytes=max_payload_bytes)
        self._transport: AsyncRunner = async_transport(url, retries=2)
        self._in_flight = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        # /api/emit: the requests of one loop turn publish in one write (auto-pipelining; one
        # write in flight at a time, so it needs no share of _in_flight)
        self._publisher = AsyncSender(self._transport, self._commands)
        self._sink_adapter = _Channels(names)
        source = parse_cluster_url(url) if is_cluster_url(url) else parse_endpoint(url)
        self.channels = ShardedChannels(source, self._sink_adapter, counters=metrics.bus_event,
                                        replica_id=replica_id, names=names)
        self._cluster = is_cluster_url(url)
        self._sink: BusSink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writes = WriteQueue(
            WRITES, run=self._run, spawn=self._spawn, routing_key=names.user_sessions_key,
            cluster=self._cluster, count=metrics.bus_event,
            head=(names.key_prefix, replica_id, self._window_ms + CONNECTED_SESSION_SLACK_MS, self._window_ms,
                  MAX_SESSIONS_PER_USER, PRESENCE_TTL_MS))
        self._heartbeat_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.channels.connected

    async def start(self, sink: BusSink) -> None:
        self._sink = sink
        self._sink_adapter.sink = sink
        if not self._cluster:
            await self._refuse_a_cluster_node()
        self.channels.start()
        self._spawn(self._subscribe_everyone())
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat(), name="bus-heartbeat")

    async def _refuse_a_cluster_node(self) -> None:
        """A plain URL that points at a Redis Cluster node would give a replica that is ready
        and deaf (every publish refused with CROSSSLOT or MOVED): refuse it, naming
        redis+cluster://. Redis not answering yet is not a refusal: the bus keeps trying."""
        client = async_client(self._url, socket_connect_timeout=2.0, socket_timeout=2.0)
        try:
            await async_expect_standalone(client, self._url)
            await self._check_eviction_policy(client)
        except ClusterModeError:
            raise  # a ConnectionError too, but not one to wait out: the URL must change
        except (RedisError, OSError) as exc:
            log.info("bus: Redis not answering yet (%s); the cluster-mode check is left to the bus", exc)
        finally:
            await client.aclose()

    async def _check_eviction_policy(self, client: Any) -> None:
        """History and sessions must not be evicted: an evicted stream reads as one that was
        never written, and a recovery could come back short. Managed services often refuse
        CONFIG: then there is nothing to check with."""
        try:
            reply = await client.config_get("maxmemory-policy")
        except (RedisError, OSError):
            return
        policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        if policy not in (None, "noeviction"):
            self._metrics.bus_event("eviction_policy")
            log.error(f"Redis evicts keys (maxmemory-policy {policy}): recovery may replay a room's history "
                      "short if it is evicted. Set maxmemory-policy noeviction on the bus's Redis.")

    async def _subscribe_everyone(self) -> None:
        await self.channels.subscribe(self.names.room_channel(EVERYONE).encode())

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await self.channels.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(RedisError, OSError, BusUnavailable):
            await self._writes.close()
        with contextlib.suppress(PublisherError, RedisError, OSError):
            await self._publisher.close()
        await self._transport.close()

    # -- channels -------------------------------------------------------------------------------

    async def subscribe(self, room: str) -> bool:
        return await self.channels.subscribe(self.names.room_channel(room).encode())

    def unsubscribe(self, room: str) -> None:
        self.channels.unsubscribe(self.names.room_channel(room).encode())

    # -- commands -------------------------------------------------------------------------------

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        try:
            async with self._in_flight:
                return await self._transport.run(calls)
        except (PublisherError, RedisError, OSError) as exc:
            raise BusUnavailable(str(exc)) from exc

    async def publish_event(self, event: str, data: Any, room: str | None) -> str:
        emit = self._commands.event(event, data, room=room, broadcast=room is None)
        try:
            return await self._publisher.publish(emit)
        except (PublisherError, RedisError, OSError) as exc:
            raise BusUnavailable(str(exc)) from exc

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        if not rooms:
            return {}
        replies = await self._run([Call.of(POSITION, 1, self.names.history_key(room)) for room in rooms])
        out = {}
        for room, reply in zip(rooms, replies, strict=True):
            try:
                out[room] = parse_position(_text(reply))
            except EnvelopeError as exc:
                raise BusUnavailable(f"position of {room}: {exc}") from None
        return out

    async def history(self, spans: Sequence[Span]) -> dict[str, Entries | None]:
        if not spans:
            return {}
        calls = [Call.of(HISTORY, 1, self.names.history_key(room), str(after), str(until) if until else "+",
                         self._lifetime_ms, HISTORY_READ_MAX) for room, after, until in spans]
        replies = await self._run(calls)
        out: dict[str, Entries | None] = {}
        for (room, _, _), reply in zip(spans, replies, strict=True):
            if not reply or int(reply[0]) != 1:
                out[room] = None
                continue
            entries: Entries = []
            for i in range(1, len(reply) - 1, 2):
                try:
                    entries.append((parse_position(_text(reply[i])), bytes(reply[i + 1])))
                except EnvelopeError:
                    self._metrics.error("bus_bad_envelope")
            out[room] = entries
        return out

    # -- sessions and presence: queued writes -----------------------------------------------------

    def save_session(self, pid: str, record: SessionRecord) -> None:
        fields = record.to_hash()
        self._queue(record.user, "S", pid, record.user, *(fields[FIELDS[name]] for name in SAVED_FIELDS))

    async def load_session(self, user: str, pid: str) -> tuple[SessionRecord, int] | None:
        [reply] = await self._run([Call.of(SESSIONS, 2, self.names.session_key(user, pid),
                                           self.names.revoked_key(user))])
        if not reply:
            return None
        it = iter(reply)
        fields = {_text(k): _text(v) for k, v in zip(it, it, strict=True)}
        revoked = fields.pop("revoked", "")
        return SessionRecord.from_hash(fields), int(revoked) if revoked.isdigit() else 0

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        self._queue(user, "E", pid, user, str(t_ms))

    def drop_session(self, pid: str, user: str) -> None:
        self._queue(user, "D", pid, user)

    def session_rooms(self, pid: str, user: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        self._queue(user, "R", pid, user, orjson.dumps(list(rooms)).decode(), room, change, at)

    def set_online(self, user: str, online: bool) -> None:
        self._queue(user, "O" if online else "F", user)

    def _queue(self, user: str, *operation: str) -> None:
        self._writes.queue(user, *operation)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- heartbeat ------------------------------------------------------------------------------

    async def _beat(self) -> None:
        """A beat at once (a new replica's users count as online from its first seconds), then
        every REPLICA_HEARTBEAT_MS."""
        beats = 0
        while True:
            await self._beat_once(full=beats % FULL_BEAT_EVERY == 0)
            await asyncio.sleep(REPLICA_HEARTBEAT_MS / 1000)
            beats += 1

    async def _beat_once(self, *, full: bool) -> None:
        """The replica is alive (every 5 s); every 30 s its sessions and presence are written
        again, which also repairs a Redis that restarted empty."""
        sink = self._sink
        if sink is None:
            return
        users, sessions = sink.heartbeat_snapshot()
        if full:
            now = str(int(time.time() * 1000))
            for pid, user in sessions:
                self._queue(user, "A", pid, user, now)
            for user in users:
                self._queue(user, "O", user)
        started = time.perf_counter()
        try:
            await self._run([Call.of(HEARTBEAT, 2, self.names.replicas_key(), self.names.replica_users_key(),
                                     self.replica_id, int(time.time() * 1000), REPLICA_TTL_MS, len(users))])
        except BusUnavailable as exc:
            log.warning("bus heartbeat failed: %s", exc)
            return
        self._metrics.redis_rtt(time.perf_counter() - started)
