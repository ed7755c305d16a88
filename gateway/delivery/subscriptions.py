"""Room membership on this replica, and the bus channels it follows from.

A socket entering a room that has no other local socket subscribes the room's channel, and the
last one out unsubscribes it: a replica receives only what concerns its own sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from gateway.delivery.registry import Conn, Registry, Removed


class Channels(Protocol):
    """The part of the bus that follows rooms (`bus.contract.Backend`)."""

    async def subscribe(self, room: str) -> bool: ...

    def unsubscribe(self, room: str) -> None: ...


class Subscriptions:
    def __init__(self, registry: Registry, channels: Channels) -> None:
        self._registry = registry
        self._channels = channels

    async def join(self, conn: Conn, rooms: Sequence[str]) -> None:
        """Put `conn` in `rooms`; returns once the channels of rooms new to this replica are
        subscribed (or the bus said it cannot: they are subscribed when it comes back)."""
        fresh = [r for r in rooms if self._registry.join(conn, r)]
        if len(fresh) == 1:
            await self._channels.subscribe(fresh[0])
        elif fresh:
            await asyncio.gather(*(self._channels.subscribe(r) for r in fresh))

    def leave(self, conn: Conn, room: str) -> bool:
        """Take `conn` out of `room`; False when it was not in it."""
        if room not in conn.rooms:
            return False
        if self._registry.leave(conn, room):
            self._channels.unsubscribe(room)
        return True

    def drop(self, sid: str) -> Removed | None:
        """Forget a socket and unsubscribe the rooms it leaves empty."""
        removed = self._registry.remove(sid)
        if removed is not None:
            for room in removed.emptied:
                self._channels.unsubscribe(room)
        return removed
