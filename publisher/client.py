"""`Publisher` (sync: Django, Flask, Celery) and `AsyncPublisher` (asyncio): the producer API.

    pub = Publisher("redis://localhost:6379/0")      # or redis+cluster://host:6379,host:6380
    pub.emit("coins:earned", {"amount": 50, "reason": "quiz", "newBalance": 1250}, user=42)
    pub.coins_earned(42, amount=50, reason="quiz", new_balance=1250)   # the same, typed

Every method checks its arguments first (a `ValueError` naming the problem, nothing sent),
then runs the bus's Lua scripts and returns what the bus says: an emit returns the message's
position in its room (`"<ms>-<seq>"`, the ID of its entry in the room's history stream:
ordered within the room, unrelated across rooms). Failures reaching Redis are retried a few
times, then raised as `PublishError`; see `publisher.script_runner` (one Redis) and
`publisher.cluster` (a Redis Cluster) for the exact policy.

The URL may be any REDIS_URL form (`publisher.transports`): `redis://`, `rediss://`,
`unix://`, `redis+sentinel://`, and `redis+cluster://` / `rediss+cluster://` for a Redis
Cluster, where the calls of one `emit_many` or batch go in one round trip per primary. A
plain URL that leads to a cluster node is refused (`ClusterModeError`, naming the
`redis+cluster://` URL to write) at the first call.

A publisher built from a URL owns its Redis clients and closes them in `close()`; one given a
`client=` (a single Redis only) leaves it open. Either is safe to share between threads (sync)
or tasks (async), and costs one connection per concurrent call (per node, on a cluster).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio

from publisher.commands import Commands, Emit, Message, positions_of, scatter
from publisher.envelope import (
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_KEY_PREFIX,
    KIND_JOIN,
    KIND_LEAVE,
    BusNames,
    Position,
    parse_position,
)
from publisher.events import MAX_PAYLOAD_BYTES
from publisher.helpers import TypedEmitters
from publisher.room_sockets import AsyncRoomSockets, RoomSockets
from publisher.transports import (
    AsyncRunner,
    AsyncStandaloneTransport,
    StandaloneTransport,
    SyncRunner,
    async_transport,
    async_transport_for,
    sync_transport,
    sync_transport_for,
)

BATCH_SIZE = 2048  # events per round trip in emit_many: bounded memory, few round trips

_ONE_SOURCE = "give either a Redis URL or client=, not both and not neither"
_NO_CLIENT = (
    "a redis+cluster:// publisher has no single Redis client (it keeps one per node: "
    "publisher.cluster); `client` exists for redis://, rediss://, unix:// and redis+sentinel:// only"
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunks(emits: list[Emit]) -> Iterator[list[Emit]]:
    for start in range(0, len(emits), BATCH_SIZE):
        yield emits[start:start + BATCH_SIZE]


def _publish(commands: Commands, transport: SyncRunner, emits: list[Emit]) -> list[str]:
    """Publish `emits`: one round trip per chunk, one script call per slot group."""
    positions: list[str] = []
    for chunk in _chunks(emits):
        plan = commands.publish_all(chunk, by_slot=transport.sharded)
        positions += scatter(plan, transport.run([call for call, _ in plan]), len(chunk))
    return positions


async def _apublish(commands: Commands, transport: AsyncRunner, emits: list[Emit]) -> list[str]:
    """`_publish` for asyncio."""
    positions: list[str] = []
    for chunk in _chunks(emits):
        plan = commands.publish_all(chunk, by_slot=transport.sharded)
        positions += scatter(plan, await transport.run([call for call, _ in plan]), len(chunk))
    return positions


def _positions(rooms: Sequence[str], replies: Sequence[Any]) -> dict[str, Position]:
    """Each room's position, from the replies of `Commands.positions`."""
    return {room: parse_position(_text(reply)) for room, reply in zip(rooms, replies, strict=True)}


def _online(replies: Sequence[Any]) -> bool:
    """From the replies of `Commands.is_online`: the user's replicas meet the live ones."""
    where, live = replies
    return not {_text(r) for r in where}.isdisjoint(_text(r) for r in live[::2])


def _count(reply: Sequence[Any]) -> int:
    """From the reply of `Commands.online_count`: the live replicas' user counts, added."""
    return sum(int(count) for count in reply[1::2])


def _check_source(url: str | None, client: Any) -> None:
    if (url is None) == (client is None):
        raise TypeError(_ONE_SOURCE)


class Publisher(TypedEmitters[str], RoomSockets):
    """Puts events and control messages on the gateway's bus (sync).

    Options must match the gateway's settings: `channel_prefix`, `key_prefix`
    (`CHANNEL_PREFIX`, `KEY_PREFIX`), `history_max_len` (`HISTORY_MAX_LEN`: entries kept per
    room), `recovery_window_s` (`RECOVERY_WINDOW`: how old history may get, and 2x that is
    how long a revocation lasts; 0 keeps no history). `max_payload_bytes` bounds the encoded
    payload; `retries` counts attempts after the first. `strict=True` makes every `emit` of
    this publisher check the five contract events against their schema, as the typed helpers
    always do (off by default: `emit` takes any sanitised payload, see `emit`). Other keyword
    arguments go to the redis-py clients built from the URL (e.g. `socket_timeout=1.0`; on a
    cluster, every node's); a `client=` of your own keeps its settings, including its own
    retries when connecting.
    """

    def __init__(self, url: str | None = None, *, client: redis.Redis | None = None,
                 channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
                 key_prefix: str = DEFAULT_KEY_PREFIX, history_max_len: int = 1000,
                 recovery_window_s: float = 120, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 retries: int = 3, strict: bool = False, **redis_options: Any) -> None:
        self._commands = Commands(
            BusNames(channel_prefix, key_prefix), history_max_len=history_max_len,
            recovery_window_s=recovery_window_s, max_payload_bytes=max_payload_bytes,
            strict=strict,
        )
        _check_source(url, client)
        self._transport: SyncRunner = (
            sync_transport(url, retries=retries, **redis_options) if url is not None
            else sync_transport_for(client, retries=retries)  # type: ignore[arg-type]
        )

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
        raise AttributeError(_NO_CLIENT)

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> str:
        """Emit `event` with payload `data` to one target; return the message's position in
        its room (`"<ms>-<seq>"`; broadcasts are in the room `*`).

        `room="classroom:7"` (any room name of the grammar in `publisher.rooms`, e.g.
        `quiz:9`), or `user=42` (the room `user:42`), or `broadcast=True` (every client).
        Any sanitised payload is taken (JSON types, at most `max_payload_bytes`: see
        `publisher.events`), also for the five contract events: a classroom-wide
        `notification:new` may carry `"userId": None`. `strict=True` (or a publisher made
        with `strict=True`; `strict=False` overrides it) also checks those five against their
        schema, as the typed helpers always do.
        """
        call = self._commands.publish([self._commands.event(event, data, room, user, broadcast, strict)])
        return positions_of(self._transport.run((call,))[0])[0]

    def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """Emit several events in as few round trips as possible; their positions, in order.

        All are checked before any is sent. Within each room the bus keeps the list's order.
        """
        return _publish(self._commands, self._transport, [self._commands.message(m) for m in messages])

    def pipeline(self) -> PublishBatch:
        """A batch: queue emits (checked at once), send them together on exit or `execute()`."""
        return PublishBatch(self)

    def _membership(self, kind: str, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        uid, wanted = self._commands.rooms(kind, user_id, rooms)
        at = _positions(wanted, self._transport.run(self._commands.positions(wanted)))
        self._transport.run((self._commands.membership(kind, uid, at),))
        return {room: str(position) for room, position in at.items()}

    def join(self, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        """Put every socket of the user, on every replica, into `rooms`; also their saved
        sessions, so a client away now comes back in them.

        Two round trips: each room's position is read first (on the room's shard), then the
        user's sessions are edited and the replicas told (on the user's shard); every event
        of a room after its position reaches the joined sockets, so an emit after `join`
        returns is not lost. Returns {room: its position at the join}.
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
        return int(self._transport.run((self._commands.kick(user_id),))[0])

    def is_online(self, user_id: str | int) -> bool:
        """Whether a live replica holds a socket of the user: the user's set of replicas meets
        the replicas heard from in the last 15 s (they report every 5 s). One round trip
        (two calls; on a cluster, to the user's shard and the `{replicas}` slot's)."""
        return _online(self._transport.run(self._commands.is_online(user_id)))

    def online_count(self) -> int:
        """The users the live replicas hold, added up: a user connected to two replicas counts
        twice (each replica counts its own users)."""
        return _count(self._transport.run((self._commands.online_count(),))[0])

    def close(self) -> None:
        """Release the connections; close the Redis clients if this publisher made them."""
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PublishBatch(TypedEmitters[None]):
    """Emits queued by `Publisher.pipeline()`, sent in one round trip (one per primary on a
    cluster).

    Each emit is checked when queued. Leaving the `with` block without an exception sends
    them; `positions` then holds their positions in order. With an exception nothing is sent.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._emits: list[Emit] = []
        self.positions: list[str] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> None:
        self._emits.append(self._publisher._commands.event(event, data, room, user, broadcast, strict))

    def __len__(self) -> int:
        return len(self._emits)

    def execute(self) -> list[str]:
        """Send the queued emits; return (and keep in `positions`) their positions."""
        emits, self._emits = self._emits, []
        self.positions += _publish(self._publisher._commands, self._publisher._transport, emits)
        return self.positions

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.execute()


class AsyncPublisher(TypedEmitters[Coroutine[Any, Any, str]], AsyncRoomSockets):
    """`Publisher` for asyncio: the same constructor and methods, awaitable.

    `pipeline()` is used with `async with` (its emits queue without awaiting).
    """

    def __init__(self, url: str | None = None, *, client: redis.asyncio.Redis | None = None,
                 channel_prefix: str = DEFAULT_CHANNEL_PREFIX,
                 key_prefix: str = DEFAULT_KEY_PREFIX, history_max_len: int = 1000,
                 recovery_window_s: float = 120, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 retries: int = 3, strict: bool = False, **redis_options: Any) -> None:
        self._commands = Commands(
            BusNames(channel_prefix, key_prefix), history_max_len=history_max_len,
            recovery_window_s=recovery_window_s, max_payload_bytes=max_payload_bytes,
            strict=strict,
        )
        _check_source(url, client)
        self._transport: AsyncRunner = (
            async_transport(url, retries=retries, **redis_options) if url is not None
            else async_transport_for(client, retries=retries)  # type: ignore[arg-type]
        )

    @property
    def names(self) -> BusNames:
        return self._commands.names

    @property
    def where(self) -> str:
        """See `Publisher.where`."""
        return self._transport.where

    @property
    def client(self) -> redis.asyncio.Redis:
        """See `Publisher.client`."""
        if isinstance(self._transport, AsyncStandaloneTransport):
            return self._transport.client
        raise AttributeError(_NO_CLIENT)

    async def emit(self, event: str, data: Any, *, room: str | None = None,
                   user: str | int | None = None, broadcast: bool = False,
                   strict: bool | None = None) -> str:
        """See `Publisher.emit`."""
        call = self._commands.publish([self._commands.event(event, data, room, user, broadcast, strict)])
        return positions_of((await self._transport.run((call,)))[0])[0]

    async def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """See `Publisher.emit_many`."""
        return await _apublish(self._commands, self._transport, [self._commands.message(m) for m in messages])

    def pipeline(self) -> AsyncPublishBatch:
        """See `Publisher.pipeline`; use `async with`."""
        return AsyncPublishBatch(self)

    async def _membership(self, kind: str, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        uid, wanted = self._commands.rooms(kind, user_id, rooms)
        at = _positions(wanted, await self._transport.run(self._commands.positions(wanted)))
        await self._transport.run((self._commands.membership(kind, uid, at),))
        return {room: str(position) for room, position in at.items()}

    async def join(self, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        """See `Publisher.join` (two round trips)."""
        return await self._membership(KIND_JOIN, user_id, rooms)

    async def leave(self, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        """See `Publisher.leave` (two round trips)."""
        return await self._membership(KIND_LEAVE, user_id, rooms)

    async def disconnect_user(self, user_id: str | int) -> int:
        """See `Publisher.disconnect_user`."""
        return int((await self._transport.run((self._commands.kick(user_id),)))[0])

    async def is_online(self, user_id: str | int) -> bool:
        """See `Publisher.is_online`."""
        return _online(await self._transport.run(self._commands.is_online(user_id)))

    async def online_count(self) -> int:
        """See `Publisher.online_count` (a user on two replicas counts twice)."""
        return _count((await self._transport.run((self._commands.online_count(),)))[0])

    async def close(self) -> None:
        """Release the connections; close the Redis clients if this publisher made them."""
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class AsyncPublishBatch(TypedEmitters[None]):
    """`PublishBatch` for `AsyncPublisher`: `async with pub.pipeline() as batch: ...`."""

    def __init__(self, publisher: AsyncPublisher) -> None:
        self._publisher = publisher
        self._emits: list[Emit] = []
        self.positions: list[str] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> None:
        self._emits.append(self._publisher._commands.event(event, data, room, user, broadcast, strict))

    def __len__(self) -> int:
        return len(self._emits)

    async def execute(self) -> list[str]:
        """Send the queued emits; return (and keep in `positions`) their positions."""
        emits, self._emits = self._emits, []
        self.positions += await _apublish(self._publisher._commands, self._publisher._transport, emits)
        return self.positions

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.execute()
