"""The bus on Redis: one pub/sub listener (`subscriber.py`) and one command client.

Publishing goes through `publisher` (the same Lua script as every producer, so the gateway's
own emits get positions and history like anyone's). Reads for recovery are Lua scripts
(`lua/*.lua`) that answer in one round trip. Writes that nobody waits for (session records,
presence) are queued and sent as one pipeline per event-loop turn, in order, by one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.bus.contract import EVERYONE, BusSink, BusUnavailable, Position, Span, order_key
from gateway.bus.endpoint import parse_endpoint
from gateway.bus.subscriber import Subscriber
from publisher import AsyncPublisher
from publisher.commands import Call
from publisher.envelope import BusNames
from publisher.errors import PublisherError
from publisher.redis_url import async_client
from publisher.script_runner import AsyncTransport, describe
from publisher.scripts import Script
from publisher.session import FIELDS, SessionRecord

log = logging.getLogger("gateway.bus")

HEARTBEAT_EVERY = 5.0
FULL_BEAT_EVERY = 6  # beats: sessions' `t` and the online set are rewritten every 30 s
PRESENCE_TTL_MS = 15_000
# Recoverable sessions kept per user; past it the oldest are evicted (a client that opens and
# drops transports in a loop cannot fill Redis).
MAX_SESSIONS_PER_USER = 100
# A connected session's record outlives two full beats, so it never expires while connected.
CONNECTED_SESSION_SLACK_MS = 2 * int(HEARTBEAT_EVERY * 1000) * FULL_BEAT_EVERY


# The fields the "S" operation of writes.lua takes after pid and user, in its order.
SAVED_FIELDS = ("sid", "rooms", "start", "created", "alive", "joined")

HISTORY, SESSIONS, HEARTBEAT, WRITES, POSITION = (
    Script.load(name, "gateway.bus") for name in ("history.lua", "sessions.lua", "heartbeat.lua", "writes.lua",
                                              "position.lua"))


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, *, names: BusNames, replica_id: str, history_max_len: int,
                 window_s: float, max_payload_bytes: int, metrics: Any) -> None:
        self.names = names
        self.replica_id = replica_id
        self._window_ms = int(window_s * 1000)
        self._metrics = metrics
        # A connection that died with a Redis restart fails its next command: retry it once or
        # twice on a fresh connection before calling the bus unavailable.
        self.client: aioredis.Redis = async_client(
            url, retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        self.publisher = AsyncPublisher(
            client=self.client, channel_prefix=names.channel_prefix, key_prefix=names.key_prefix,
            history_max_len=history_max_len, recovery_window_s=window_s,
            max_payload_bytes=max_payload_bytes,
        )
        # Scripts go through the publisher's transport: packed once, sent on kept connections,
        # EVAL on NOSCRIPT, bounded retries; a third of redis-py's CPU per command.
        self._transport = AsyncTransport(self.client, retries=2, where=describe(self.client))
        self._probe_channel = names.room_channel(f"__probe:{replica_id}").encode()
        self.subscriber = Subscriber(
            parse_endpoint(url),
            self._on_message,
            probe_channel=self._probe_channel,
            on_connected=self._on_connected,
            on_resubscribed=self._on_resubscribed,
            on_disconnected=self._on_disconnected,
            publish_probe=self._publish_probe,
            counters=metrics.bus_event,
        )
        self._sink: BusSink | None = None
        self._writes: list[str] = []
        self._position_waiters: list[asyncio.Future[Position]] = []
        self._flush_scheduled = False
        self._writer_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._policy_checked = False

    @property
    def connected(self) -> bool:
        return self.subscriber.connected

    async def start(self, sink: BusSink) -> None:
        self._sink = sink
        self.subscriber.on_message = sink.on_message  # straight to delivery: no hop per message
        self.subscriber.batch_begin, self.subscriber.batch_end = sink.begin_batch, sink.end_batch
        self.subscriber.desired.add(self.names.broadcast_channel().encode())
        self.subscriber.start()
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat(), name="bus-heartbeat")

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await self.subscriber.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self._flush()
        await self._transport.close()
        await self.client.aclose()

    # -- the listener's callbacks ---------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.on_message(data)

    async def _on_connected(self) -> None:
        if self._sink is not None:
            await self._sink.on_bus_up()

    async def _on_resubscribed(self) -> None:
        if self._sink is not None:
            await self._sink.on_bus_resubscribed()
        self._spawn(self._beat_once())
        if not self._policy_checked:
            self._policy_checked = True
            self._spawn(self._check_eviction_policy())

    async def _check_eviction_policy(self) -> None:
        """History and sessions must not be evicted: an evicted history stream cannot be told
        from a room with no events, and recovery would come back silently short."""
        try:
            reply = await self.client.config_get("maxmemory-policy")
        except (RedisError, OSError):
            return  # managed services often refuse CONFIG: nothing to check with
        policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        if policy not in (None, "noeviction"):
            self._metrics.bus_event("eviction_policy")
            log.error(f"Redis evicts keys (maxmemory-policy {policy}): recovery may replay a room's "
                      "history short if it is evicted. Set maxmemory-policy noeviction on the bus's Redis.")

    def _on_disconnected(self) -> None:
        if self._sink is not None:
            self._sink.on_bus_down()

    async def _publish_probe(self) -> None:
        await self.client.publish(self._probe_channel, b"probe")

    # -- channels -------------------------------------------------------------------------------

    async def subscribe(self, room: str) -> bool:
        return await self.subscriber.subscribe(self.names.room_channel(room).encode())

    def unsubscribe(self, room: str) -> None:
        self.subscriber.unsubscribe(self.names.room_channel(room).encode())

    # -- publishing -----------------------------------------------------------------------------

    async def publish_event(self, event: str, data: Any, room: str | None) -> str:
        try:
            if room is None:
                return await self.publisher.emit(event, data, broadcast=True)
            return await self.publisher.emit(event, data, room=room)
        except ConnectionError as exc:
            raise BusUnavailable(str(exc)) from exc

    # -- positions and history ------------------------------------------------------------------

    async def position(self) -> Position:
        """The bus's current position. Calls made in the same loop turn share one read: each
        caller asked after its own subscriptions were confirmed, and the read goes out after
        all of them, so it is valid for every one (see `DeliveryCore.attach_rooms`)."""
        fut: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._position_waiters.append(fut)
        if len(self._position_waiters) == 1:
            asyncio.get_running_loop().call_soon(self._spawn, self._read_position())
        return await fut

    async def _read_position(self) -> None:
        waiters, self._position_waiters = self._position_waiters, []
        try:
            result: Position | BaseException = await self._position_now()
        except BusUnavailable as exc:
            result = exc
        for fut in waiters:
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            [reply] = await self._transport.run([Call.of(script, len(keys), *keys, *args)])
        except (PublisherError, RedisError, OSError) as exc:
            raise BusUnavailable(str(exc)) from exc
        return reply

    async def _position_now(self) -> Position:
        epoch, ms, seq = await self._run(POSITION, [self.names.clock_key()], [secrets.token_hex(4)])
        return Position(_text(epoch), int(ms or 0), int(seq or 0))

    async def history(self, spans: Sequence[Span]) -> list[bytes] | None:
        if not spans:
            return []
        current = await self._position_now()
        if any(start.epoch != current.epoch for _, start, _ in spans):
            return None
        args: list[str] = []
        for _, start, end in spans:
            args.append(start.stream_id)
            args.append(end.stream_id if end is not None else "+")
        keys = [self.names.history_key(room) if room != EVERYONE else self.names.broadcast_history_key()
                for room, _, _ in spans]
        reply = await self._run(HISTORY, keys, args)
        if not reply or int(reply[0]) != 1:
            return None
        messages: list[bytes] = reply[1:]
        if len(spans) > 1:
            messages.sort(key=_key_of)
        return messages

    # -- sessions and presence: queued writes -----------------------------------------------------

    def save_session(self, pid: str, record: SessionRecord) -> None:
        fields = record.to_hash()
        self._queue("S", pid, record.user, *(fields[FIELDS[name]] for name in SAVED_FIELDS))

    async def load_session(self, pid: str) -> tuple[SessionRecord, int] | None:
        reply = await self._run(SESSIONS, [self.names.session_key(pid)], [self.names.key_prefix])
        if not reply:
            return None
        it = iter(reply)
        fields = {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
        revoked = fields.pop("revoked", "")
        return SessionRecord.from_hash(fields), int(revoked) if revoked.isdigit() else 0

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        self._queue("E", pid, user, str(t_ms))

    def drop_session(self, pid: str, user: str) -> None:
        self._queue("D", pid, user)

    def session_rooms(self, pid: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        self._queue("R", pid, orjson.dumps(list(rooms)).decode(), room, change, at)

    def set_online(self, user: str, online: bool) -> None:
        self._queue("O" if online else "F", user)

    def _queue(self, *operation: str) -> None:
        self._writes.extend(operation)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn, self._flush())

    async def _flush(self) -> None:
        """Everything queued in this loop turn, as one script call (`lua/writes.lua`)."""
        async with self._writer_lock:  # one call at a time: writes land in the order queued
            self._flush_scheduled = False
            writes, self._writes = self._writes, []
            if not writes:
                return
            try:
                await self._run(WRITES, [], [
                    self.names.key_prefix, self.replica_id, self._window_ms + CONNECTED_SESSION_SLACK_MS,
                    self._window_ms, PRESENCE_TTL_MS, MAX_SESSIONS_PER_USER, *writes])
            except BusUnavailable as exc:
                # Session records and presence are rebuilt by the next heartbeat.
                log.warning("bus write batch failed: %s", exc, extra={"operations": len(writes)})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- heartbeat ------------------------------------------------------------------------------

    async def _beat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            beats += 1
            await self._beat_once(full=beats % FULL_BEAT_EVERY == 0)

    async def _beat_once(self, *, full: bool = True) -> None:
        sink = self._sink
        if sink is None:
            return
        users, sessions = sink.heartbeat_snapshot() if full else ((), ())
        started = time.perf_counter()
        try:
            await self._run(
                HEARTBEAT, [self.names.replicas_key(), self.names.online_key(self.replica_id)],
                [self.replica_id, int(time.time() * 1000), PRESENCE_TTL_MS,
                 self._window_ms + CONNECTED_SESSION_SLACK_MS, self.names.key_prefix,
                 "full" if full else "light", "\n".join(users),
                 "\n".join(f"{pid} {user}" for pid, user in sessions)],
            )
        except BusUnavailable as exc:
            log.warning("bus heartbeat failed: %s", exc)
            return
        self._metrics.redis_rtt(time.perf_counter() - started)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _key_of(message: bytes) -> int:
    """The order key of a stored message, read from its offset (`..."o":"epoch:ms-seq"}`)."""
    dash = message.rfind(b"-")
    tail = message[dash + 1:]
    ms = message[message.rfind(b":", 0, dash) + 1:dash]
    return order_key(int(ms), int(tail[: tail.find(b'"')]))
