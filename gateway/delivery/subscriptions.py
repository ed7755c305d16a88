"""Room membership on this replica, the bus channels it follows from, and where each room stands.

A socket entering a room that has no other local socket subscribes the room's channel, and the
last one out unsubscribes it: a replica receives only what concerns its own sockets. When a
channel is first subscribed, the room's position is read once (after Redis confirmed the
subscription, so nothing published after it is missed); from then on every message received on
the channel moves the room's cursor (`fanout`), and a socket entering the room starts there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.delivery.offsets import key_of
from gateway.delivery.registry import Conn, Registry, Removed
from publisher.envelope import EVERYONE, Position


class Channels(Protocol):
    """The part of the bus that follows rooms (`bus.contract.Backend`)."""

    async def subscribe(self, room: str) -> bool: ...

    def unsubscribe(self, room: str) -> None: ...

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]: ...


class Subscriptions:
    def __init__(self, registry: Registry, channels: Channels, *, on_gone: Callable[[str], None]) -> None:
        self._registry = registry
        self._channels = channels
        self._on_gone = on_gone  # a room's last local socket left: its channel is let go

    async def join(self, conn: Conn, rooms: Sequence[str]) -> None:
        """Put `conn` in `rooms`; returns once the channels of rooms new to this replica are
        subscribed and their positions read. Raises BusUnavailable when a position cannot be
        read (the channel stays desired: it is subscribed when the bus comes back)."""
        if self._registry.get(conn.sid) is not conn:
            return  # gone while Redis was asked: never put back
        for room in rooms:
            self._registry.join(conn, room)
        # Every room, not only those new here: another socket's subscription of the room may
        # still await its confirmation (a confirmed one answers at once).
        if len(rooms) == 1:
            await self._channels.subscribe(rooms[0])
        elif rooms:
            await asyncio.gather(*(self._channels.subscribe(r) for r in rooms))
        unknown = [r for r in rooms if r not in self._registry.cursor]
        if unknown:
            await self.read_positions(unknown)

    async def read_positions(self, rooms: Sequence[str]) -> None:
        """Move each room's cursor to its stream's position now, if that is newer."""
        cursor = self._registry.cursor
        for room, at in (await self._channels.positions(rooms)).items():
            key = key_of(at.ms, at.seq)
            if key > cursor.get(room, -1) and (room in self._registry.rooms or room == EVERYONE):  # followed
                cursor[room] = key

    def leave(self, conn: Conn, room: str) -> bool:
        """Take `conn` out of `room`; False when it was not in it."""
        if room not in conn.rooms:
            return False
        if self._registry.leave(conn, room):
            self._let_go(room)
        return True

    def _let_go(self, room: str) -> None:
        self._registry.cursor.pop(room, None)
        self._channels.unsubscribe(room)
        self._on_gone(room)

    def drop(self, sid: str) -> Removed | None:
        """Forget a socket and unsubscribe the rooms it leaves empty."""
        removed = self._registry.remove(sid)
        if removed is not None:
            for room in removed.emptied:
                self._let_go(room)
        return removed
