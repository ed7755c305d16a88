"""`AsyncPublisher` (asyncio): `publisher.client.Publisher`'s API, awaitable.

    pub = AsyncPublisher("redis://localhost:6379/0")
    position = await pub.emit("coins:earned", {"amount": 50, "reason": "quiz", "newBalance": 1}, user=42)

`await pub.emit(...)` returns the event's position once Redis has it, as it always did; the
emits that concurrent tasks issue in the same loop turn leave together, in one write and one
script call per slot group (`publisher.async_sender`, as ioredis pipelines what one tick
issued). The other methods run their own round trips.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import redis.asyncio

from publisher import replies
from publisher.async_sender import AsyncSender
from publisher.commands import Commands, Emit, Message, scatter
from publisher.envelope import (
    DEFAULT_CHANNEL_PREFIX,
    DEFAULT_KEY_PREFIX,
    KIND_JOIN,
    KIND_LEAVE,
    BusNames,
)
from publisher.events import MAX_PAYLOAD_BYTES
from publisher.helpers import QueuedEmits, TypedEmitters
from publisher.room_sockets import AsyncRoomSockets
from publisher.transports import (
    AsyncRunner,
    AsyncStandaloneTransport,
    async_transport,
    async_transport_for,
)

BATCH_SIZE = 2048  # events per round trip in emit_many: bounded memory, few round trips


def _chunks(emits: list[Emit]) -> Iterator[list[Emit]]:
    for start in range(0, len(emits), BATCH_SIZE):
        yield emits[start:start + BATCH_SIZE]


async def _publish(commands: Commands, transport: AsyncRunner, emits: list[Emit]) -> list[str]:
    """Publish `emits` now: one round trip per chunk, one script call per slot group."""
    positions: list[str] = []
    for chunk in _chunks(emits):
        plan = commands.publish_all(chunk, by_slot=transport.sharded)
        positions += scatter(plan, await transport.run([call for call, _ in plan]), len(chunk))
    return positions


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
        replies.check_source(url, client)
        self._transport: AsyncRunner = (
            async_transport(url, retries=retries, **redis_options) if url is not None
            else async_transport_for(client, retries=retries)  # type: ignore[arg-type]
        )
        self._sender = AsyncSender(self._transport, self._commands)

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
        raise AttributeError(replies.NO_CLIENT)

    async def emit(self, event: str, data: Any, *, room: str | None = None,
                   user: str | int | None = None, broadcast: bool = False,
                   strict: bool | None = None) -> str:
        """See `Publisher.emit`; returns the position once Redis has it (emits issued in the
        same loop turn share one write)."""
        return await self._sender.publish(self._commands.event(event, data, room, user, broadcast, strict))

    async def emit_many(self, messages: Iterable[Message]) -> list[str]:
        """See `Publisher.emit_many`."""
        return await _publish(self._commands, self._transport, [self._commands.message(m) for m in messages])

    def pipeline(self) -> AsyncPublishBatch:
        """See `Publisher.pipeline`; use `async with`."""
        return AsyncPublishBatch(self)

    async def _membership(self, kind: str, user_id: str | int, rooms: str | Iterable[str]) -> dict[str, str]:
        uid, wanted = self._commands.rooms(kind, user_id, rooms)
        at = replies.positions(wanted, await self._transport.run(self._commands.positions(wanted)))
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
        return replies.online(await self._transport.run(self._commands.is_online(user_id)))

    async def online_count(self) -> int:
        """See `Publisher.online_count` (a user on two replicas counts twice)."""
        return replies.count((await self._transport.run((self._commands.online_count(),)))[0])

    async def close(self) -> None:
        """Wait for the emits in flight, then release the connections; close the Redis
        clients if this publisher made them."""
        try:
            await self._sender.close()
        finally:
            await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class AsyncPublishBatch(QueuedEmits):
    """`PublishBatch` for `AsyncPublisher`: `async with pub.pipeline() as batch: ...`."""

    def __init__(self, publisher: AsyncPublisher) -> None:
        super().__init__(publisher._commands)
        self._publisher = publisher

    async def execute(self) -> list[str]:
        """Send the queued emits; return (and keep in `positions`) their positions."""
        self.positions += await _publish(self._commands, self._publisher._transport, self._take())
        return self.positions

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.execute()
