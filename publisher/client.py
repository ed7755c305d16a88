"""`Publisher` (sync: Django, Flask, Celery): the producer API. `AsyncPublisher`, for asyncio,
is in `publisher.async_client`.

    pub = Publisher("redis://localhost:6379/0")      # or redis+cluster://host:6379,host:6380
    pub.emit("coins:earned", {"amount": 50, "reason": "quiz", "newBalance": 1250}, user=42)
    pub.coins_earned(42, amount=50, reason="quiz", new_balance=1250)   # the same, typed
    position = pub.emit("news", {}, broadcast=True).result()          # waiting for Redis

Every method checks its arguments first (a `ValueError` naming the problem, nothing sent).
`emit` then queues the event and returns at once a `concurrent.futures.Future` of its position
in its room (`"<ms>-<seq>"`, the ID of its entry in the room's history stream: ordered within
the room, unrelated across rooms). A background thread writes what is queued after at most
`linger` seconds, many events per round trip and per script call (`publisher.sender`): that is
what keeps Redis's cost per event low. Every other method waits for Redis's answer, in order
after the emits before it. `flush()` waits for everything queued; `close()` flushes and
closes. Failures reaching Redis are retried a few times, then raised as `PublishError` (by the
future of each emit of the write that failed, and by `flush`); see `publisher.script_runner`
(one Redis) and `publisher.cluster` (a Redis Cluster) for the exact policy.

The URL may be any REDIS_URL form (`publisher.transports`): `redis://`, `rediss://`,
`unix://`, `redis+sentinel://`, and `redis+cluster://` / `rediss+cluster://` for a Redis
Cluster, where the calls of one write go in one round trip per primary. A plain URL that leads
to a cluster node is refused (`ClusterModeError`, naming the `redis+cluster://` URL to write)
at the first call.

A publisher built from a URL owns its Redis clients and closes them in `close()`; one given a
`client=` (a single Redis only) leaves it open. It is safe to share between threads; after a
fork the child gets a sender and connections of its own on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import redis

from publisher import replies
from publisher.commands import Commands, Message
from publisher.envelope import (
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_KEY_PREFIX,
    KIND_JOIN,
    KIND_LEAVE,
    BusNames,
)
from publisher.events import MAX_PAYLOAD_BYTES
from publisher.helpers import QueuedEmits, TypedEmitters
from publisher.room_sockets import RoomSockets
from publisher.sender import DEFAULT_LINGER, MAX_QUEUE, Sender
from publisher.transports import (
    StandaloneTransport,
    SyncRunner,
    sync_transport,
    sync_transport_for,
)


class Publisher(TypedEmitters["Future[str]"], RoomSockets):
    """Puts events and control messages on the gateway's bus (sync).

    Options must match the gateway's settings: `channel_prefix`, `key_prefix`
    (`CHANNEL_PREFIX`, `KEY_PREFIX`), `history_max_len` (`HISTORY_MAX_LEN`: entries kept per
    room), `recovery_window_s` (`RECOVERY_WINDOW`: how old history may get, and 2x that is
    how long a revocation lasts; 0 keeps no history). `max_payload_bytes` bounds the encoded
    payload; `retries` counts attempts after the first. `strict=True` makes every `emit` of
    this publisher check the five contract events against their schema, as the typed helpers
    always do (off by default: `emit` takes any sanitised payload, see `emit`). `linger`: how
    long, in seconds, a queued emit may wait for others to share its write (default 1 ms; 0:
    written as soon as the sender is free, still together with whatever queued meanwhile);
    `max_queue`: how many calls may wait before `emit` blocks (backpressure). Other keyword
    arguments go to the redis-py clients built from the URL (e.g. `socket_timeout=1.0`; on a
    cluster, every node's); a `client=` of your own keeps its settings, including its own
    retries when connecting.
    """

    def __init__(self, url: str | None = None, *, client: redis.Redis | None = None,
                 channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
                 key_prefix: str = DEFAULT_KEY_PREFIX, history_max_len: int = 1000,
                 recovery_window_s: float = 120, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 retries: int = 3, strict: bool = False, linger: float = DEFAULT_LINGER,
                 max_queue: int = MAX_QUEUE, **redis_options: Any) -> None:
        self._commands = Commands(
            BusNames(channel_prefix, key_prefix), history_max_len=history_max_len,
            recovery_window_s=recovery_window_s, max_payload_bytes=max_payload_bytes,
            strict=strict,
        )
        replies.check_source(url, client)
        self._transport: SyncRunner = (
            sync_transport(url, retries=retries, **redis_options) if url is not None
            else sync_transport_for(client, retries=retries)  # type: ignore[arg-type]
        )
        self._sender = Sender(self._transport, self._commands, linger=linger, max_queue=max_queue)

    @property
    def names(self) -> BusNames:
        return self._commands.names

    @property
    def where(self) -> str:
        """Where the publisher points, credentials masked."""
        return self._transport.where

    @property
    def client(self) -> redis.Redis:
        """The redis-py client, for a single Redis (redis://, rediss://, unix://, Sentinel, or
        `client=`). A `redis+cluster://` publisher has none: AttributeError."""
        if isinstance(self._transport, StandaloneTransport):
            return self._transport.client
        raise AttributeError(replies.NO_CLIENT)

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> Future[str]:
        """Emit `event` with payload `data` to one target. Checked now (a `ValueError` or
        `TypeError`, nothing queued); then queued, and the returned future resolves to the
        message's position in its room (`"<ms>-<seq>"`; broadcasts are in the room `*`) once
        Redis has it, or to the `PublishError` that kept it from Redis. `.result()` waits.

        `room="classroom:7"` (any room name of the grammar in `publisher.rooms`, e.g.
        `quiz:9`), or `user=42` (the room `user:42`), or `broadcast=True` (every client).
        Any sanitised payload is taken (JSON types, at most `max_payload_bytes`: see
        `publisher.events`), also for the five contract events: a classroom-wide
        `notification:new` may carry `"userId": None`. `strict=True` (or a publisher made
        with `strict=True`; `strict=False` overrides it) also checks those five against their
        schema, as the typed helpers always do. Emits of one thread reach each room in the
        order they were made.
        """
        return self._sender.emit(self._commands.event(event, data, room, user, broadcast, strict))

    def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """Emit several events and wait for them; their positions, in order.

        All are checked before any is queued. Within each room the bus keeps the list's order.
        """
        emits = [self._commands.message(m) for m in messages]
        return [future.result() for future in self._sender.emit_all(emits)]

    def pipeline(self) -> PublishBatch:
        """A batch: queue emits (checked at once), send them together on exit or `execute()`,
        and wait for them."""
        return PublishBatch(self)

    def _membership(self, kind: str, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        uid, wanted = self._commands.rooms(kind, user_id, rooms)

        def run(transport: SyncRunner) -> dict[str, str]:
            at = replies.positions(wanted, transport.run(self._commands.positions(wanted)))
            transport.run((self._commands.membership(kind, uid, at),))
            return {room: str(position) for room, position in at.items()}

        return self._sender.call(run)

    def join(self, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        """Put every socket of the user, on every replica, into `rooms`; also their saved
        sessions, so a client away now comes back in them.

        Runs after the emits queued before it. Two round trips: each room's position is read
        first (on the room's shard), then the user's sessions are edited and the replicas told
        (on the user's shard); every event of a room after its position reaches the joined
        sockets, so an emit after `join` returns is not lost. Returns {room: its position at
        the join}.
        """
        return self._membership(KIND_JOIN, user_id, rooms)

    def leave(self, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        """Take every socket of the user out of `rooms` (never out of `user:<id>`), and their
        saved sessions. Two round trips, as `join`; returns {room: its position at the leave}."""
        return self._membership(KIND_LEAVE, user_id, rooms)

    def disconnect_user(self, user_id: str | int) -> int:
        """Disconnect every socket of the user for good: delete their recoverable sessions,
        mark them revoked (for twice the recovery window), then kick them on every replica.
        One round trip; returns how many recoverable sessions were deleted."""
        call = self._commands.kick(user_id)
        return self._sender.call(lambda transport: int(transport.run((call,))[0]))

    def is_online(self, user_id: str | int) -> bool:
        """Whether a live replica holds a socket of the user: the user's set of replicas meets
        the replicas heard from in the last 15 s (they report every 5 s). One round trip
        (two calls; on a cluster, to the user's shard and the `{replicas}` slot's)."""
        calls = self._commands.is_online(user_id)
        return self._sender.call(lambda transport: replies.online(transport.run(calls)))

    def online_count(self) -> int:
        """The users the live replicas hold, added up: a user connected to two replicas counts
        twice (each replica counts its own users)."""
        call = self._commands.online_count()
        return self._sender.call(lambda transport: replies.count(transport.run((call,))[0]))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every emit handed in so far is written and acknowledged by Redis.
        `PublishTimeout` after `timeout` seconds (None: no limit); `PublishError` if an emit
        failed since the last `flush` (its future holds the error too)."""
        self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (see `flush`), then release the connections; close the Redis clients if this
        publisher made them. Emitting after `close` raises `PublisherError`."""
        try:
            self._sender.close(timeout)
        finally:
            self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PublishBatch(QueuedEmits):
    """Emits queued by `Publisher.pipeline()`, sent together (one round trip, one script call
    per slot group; in order after the publisher's earlier emits).

    Each emit is checked when queued. Leaving the `with` block without an exception sends
    them and waits; `positions` then holds their positions in order. With an exception
    nothing is sent.
    """

    def __init__(self, publisher: Publisher) -> None:
        super().__init__(publisher._commands)
        self._publisher = publisher

    def execute(self) -> list[str]:
        """Send the queued emits and wait; return (and keep in `positions`) their positions."""
        self.positions += [future.result() for future in self._publisher._sender.emit_all(self._take())]
        return self.positions

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.execute()
