"""`Publisher` (sync: Django, Flask, Celery) and `AsyncPublisher` (asyncio): the producer API.

    pub = Publisher("redis://localhost:6379/0")
    pub.emit("coins:earned", {"amount": 50, "reason": "quiz", "newBalance": 1250}, user=42)
    pub.coins_earned(42, amount=50, reason="quiz", new_balance=1250)   # the same, typed

Every method checks its arguments first (a `ValueError` naming the problem, nothing sent),
then runs the bus's Lua scripts in one round trip and returns what the bus says: the offset of
the message for emits and control messages. Failures reaching Redis are retried a few times,
then raised as `PublishError`; see `publisher.script_runner` for the exact policy.

A publisher built from a URL owns its Redis client and closes it in `close()`; one given a
`client=` leaves it open. Either is safe to share between threads (sync) or tasks (async),
and costs one connection per concurrent call.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from publisher.commands import Call, Commands, Message
from publisher.envelope import (
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_KEY_PREFIX,
    KIND_JOIN,
    KIND_LEAVE,
    BusNames,
)
from publisher.events import MAX_PAYLOAD_BYTES
from publisher.helpers import TypedEmitters
from publisher.redis_url import async_client, redact, sentinel_clients, sync_client
from publisher.script_runner import AsyncTransport, SyncTransport, describe

BATCH_SIZE = 500  # calls per round trip in emit_many: bounded memory, few round trips


def _offset(reply: Any) -> str:
    """The offset from the publish script's reply {offset, receivers}."""
    offset = reply[0]
    return offset if isinstance(offset, str) else offset.decode("ascii")


def _chunks(calls: list[Call]) -> Iterator[list[Call]]:
    for start in range(0, len(calls), BATCH_SIZE):
        yield calls[start:start + BATCH_SIZE]


_ONE_SOURCE = "give either a Redis URL or client=, not both and not neither"


def _client(url: str | None, client: Any, redis_options: dict[str, Any], make: Any, retry: Any) -> tuple[Any, str]:
    """The redis-py client of a publisher (built from `url`, or given) and where it points."""
    if url is not None and client is None:
        # Retries are ours alone (bounded, documented): redis-py's would multiply them.
        redis_options.setdefault("retry", retry)
        return make(url, **redis_options), redact(url)
    if client is not None and url is None:
        return client, describe(client)
    raise TypeError(_ONE_SOURCE)


def _check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ValueError(f"retries must be an integer from 0 to 10, got {retries!r}")
    return retries


class Publisher(TypedEmitters[str]):
    """Puts events and control messages on the gateway's bus (sync).

    Options must match the gateway's settings: `channel_prefix`, `key_prefix`
    (`CHANNEL_PREFIX`, `KEY_PREFIX`), `history_max_len` (`HISTORY_MAX_LEN`: entries kept per
    room), `recovery_window_s` (`RECOVERY_WINDOW`: how old history may get, and 2x that is
    how long a revocation lasts; 0 keeps no history). `max_payload_bytes` bounds the encoded
    payload; `retries` counts attempts after the first. `strict=True` makes every `emit` of
    this publisher check the five contract events against their schema, as the typed helpers
    always do (off by default: `emit` takes any sanitised payload, see `emit`). Other keyword
    arguments go to the redis-py client built from the URL (e.g. `socket_timeout=1.0`); a
    `client=` of your own keeps its settings, including its own retries when connecting.
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
        retries = _check_retries(retries)
        self._owns_client = client is None
        client, where = _client(url, client, redis_options, sync_client, redis.retry.Retry(NoBackoff(), 0))
        self._transport = SyncTransport(client, retries=retries, where=where)

    @property
    def names(self) -> BusNames:
        return self._commands.names

    @property
    def client(self) -> redis.Redis:
        return self._transport.client

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> str:
        """Emit `event` with payload `data` to one target; return the message's offset.

        `room="classroom:7"` (any room name of the grammar in `publisher.rooms`, e.g.
        `quiz:9`), or `user=42` (the room `user:42`), or `broadcast=True` (every client).
        Any sanitised payload is taken (JSON types, at most `max_payload_bytes`: see
        `publisher.events`), also for the five contract events: a classroom-wide
        `notification:new` may carry `"userId": None`. `strict=True` (or a publisher made
        with `strict=True`; `strict=False` overrides it) also checks those five against their
        schema, as the typed helpers always do.
        """
        call = self._commands.event(event, data, room, user, broadcast, strict)
        return _offset(self._transport.run((call,))[0])

    def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """Emit several events in as few round trips as possible; their offsets, in order.

        All are checked before any is sent. Ordering on the bus follows the list.
        """
        calls = [self._commands.message(m) for m in messages]
        offsets: list[str] = []
        for chunk in _chunks(calls):
            offsets.extend(_offset(reply) for reply in self._transport.run(chunk))
        return offsets

    def pipeline(self) -> PublishBatch:
        """A batch: queue emits (checked at once), send them together on exit or `execute()`."""
        return PublishBatch(self)

    def join(self, user_id: str | int, rooms: str | Iterable[str]) -> str:
        """Put every socket of the user, on every replica, into `rooms`; also their saved
        sessions, so a client away now comes back in them. Returns the control offset."""
        replies = self._transport.run(self._commands.membership(KIND_JOIN, user_id, rooms))
        return _offset(replies[-1])

    def leave(self, user_id: str | int, rooms: str | Iterable[str]) -> str:
        """Take every socket of the user out of `rooms` (never out of `user:<id>`)."""
        replies = self._transport.run(self._commands.membership(KIND_LEAVE, user_id, rooms))
        return _offset(replies[-1])

    def disconnect_user(self, user_id: str | int) -> str:
        """Disconnect every socket of the user for good: delete their recoverable sessions,
        mark them revoked (for twice the recovery window), then kick them on every replica."""
        return _offset(self._transport.run(self._commands.kick(user_id))[-1])

    def is_online(self, user_id: str | int) -> bool:
        """Whether a live replica holds a socket of the user (replicas report every 5 s)."""
        return bool(self._transport.run((self._commands.is_online(user_id),))[0])

    def online_count(self) -> int:
        """How many distinct users live replicas hold."""
        return int(self._transport.run((self._commands.online_count(),))[0])

    def close(self) -> None:
        """Release the connections; close the Redis client if this publisher made it."""
        self._transport.close()
        if self._owns_client:
            self._transport.client.close()
            for sentinel in sentinel_clients(self._transport.client):
                sentinel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PublishBatch(TypedEmitters[None]):
    """Emits queued by `Publisher.pipeline()`, sent in one round trip.

    Each emit is checked when queued. Leaving the `with` block without an exception sends
    them; `offsets` then holds their offsets in order. With an exception nothing is sent.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._calls: list[Call] = []
        self.offsets: list[str] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> None:
        self._calls.append(self._publisher._commands.event(event, data, room, user, broadcast, strict))

    def __len__(self) -> int:
        return len(self._calls)

    def execute(self) -> list[str]:
        """Send the queued emits; return (and keep in `offsets`) their offsets."""
        calls, self._calls = self._calls, []
        transport = self._publisher._transport
        for chunk in _chunks(calls):
            self.offsets.extend(_offset(reply) for reply in transport.run(chunk))
        return self.offsets

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.execute()


class AsyncPublisher(TypedEmitters[Coroutine[Any, Any, str]]):
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
        retries = _check_retries(retries)
        self._owns_client = client is None
        client, where = _client(url, client, redis_options, async_client,
                                redis.asyncio.retry.Retry(NoBackoff(), 0))
        self._transport = AsyncTransport(client, retries=retries, where=where)

    @property
    def names(self) -> BusNames:
        return self._commands.names

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._transport.client

    async def emit(self, event: str, data: Any, *, room: str | None = None,
                   user: str | int | None = None, broadcast: bool = False,
                   strict: bool | None = None) -> str:
        """See `Publisher.emit`."""
        call = self._commands.event(event, data, room, user, broadcast, strict)
        return _offset((await self._transport.run((call,)))[0])

    async def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """See `Publisher.emit_many`."""
        calls = [self._commands.message(m) for m in messages]
        offsets: list[str] = []
        for chunk in _chunks(calls):
            offsets.extend(_offset(reply) for reply in await self._transport.run(chunk))
        return offsets

    def pipeline(self) -> AsyncPublishBatch:
        """See `Publisher.pipeline`; use `async with`."""
        return AsyncPublishBatch(self)

    async def join(self, user_id: str | int, rooms: str | Iterable[str]) -> str:
        """See `Publisher.join`."""
        replies = await self._transport.run(
            self._commands.membership(KIND_JOIN, user_id, rooms))
        return _offset(replies[-1])

    async def leave(self, user_id: str | int, rooms: str | Iterable[str]) -> str:
        """See `Publisher.leave`."""
        replies = await self._transport.run(
            self._commands.membership(KIND_LEAVE, user_id, rooms))
        return _offset(replies[-1])

    async def disconnect_user(self, user_id: str | int) -> str:
        """See `Publisher.disconnect_user`."""
        return _offset((await self._transport.run(self._commands.kick(user_id)))[-1])

    async def is_online(self, user_id: str | int) -> bool:
        """See `Publisher.is_online`."""
        return bool((await self._transport.run((self._commands.is_online(user_id),)))[0])

    async def online_count(self) -> int:
        """See `Publisher.online_count`."""
        return int((await self._transport.run((self._commands.online_count(),)))[0])

    async def close(self) -> None:
        """Release the connections; close the Redis client if this publisher made it."""
        await self._transport.close()
        if self._owns_client:
            await self._transport.client.aclose()
            for sentinel in sentinel_clients(self._transport.client):
                await sentinel.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class AsyncPublishBatch(TypedEmitters[None]):
    """`PublishBatch` for `AsyncPublisher`: `async with pub.pipeline() as batch: ...`."""

    def __init__(self, publisher: AsyncPublisher) -> None:
        self._publisher = publisher
        self._calls: list[Call] = []
        self.offsets: list[str] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> None:
        self._calls.append(self._publisher._commands.event(event, data, room, user, broadcast, strict))

    def __len__(self) -> int:
        return len(self._calls)

    async def execute(self) -> list[str]:
        """Send the queued emits; return (and keep in `offsets`) their offsets."""
        calls, self._calls = self._calls, []
        transport = self._publisher._transport
        for chunk in _chunks(calls):
            self.offsets.extend(_offset(reply) for reply in await transport.run(chunk))
        return self.offsets

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.execute()
