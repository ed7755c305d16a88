"""Putting a socket into rooms without losing or repeating an event.

A socket entering rooms (a new connection, a recovery, a producer's `join`) holds its live
events in `Conn.pending` while its channels are subscribed and history is read, then gets both,
merged in order, once each (`Conn.attach`). A new socket's session starts at the bus position
read after its subscriptions are confirmed: every event after it reaches the socket live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from gateway.bus.contract import EVERYONE, Backend, BusUnavailable, Position, Span
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.delivery.subscriptions import Subscriptions

# Called when a connected socket's rooms change: (conn, room, "j" joined | "l" left, where on
# the bus, if known). The session record follows (`sio.server`).
RoomsChanged = Callable[[Conn, str, str, Position | None], None]


class HistoryLost(Exception):
    """A recovery cannot be complete: events after the client's offset are gone."""


class Attacher:
    def __init__(self, registry: Registry, subscriptions: Subscriptions, backend: Backend, counters: Counters, *,
                 replay: Callable[[list[bytes]], list[tuple[str | None, Outgoing]]],
                 rooms_changed: RoomsChanged) -> None:
        self._registry = registry
        self._subscriptions = subscriptions
        self._backend = backend
        self._counters = counters
        self._replay = replay
        self._rooms_changed = rooms_changed
        self._locks: dict[str, asyncio.Lock] = {}
        # sids between their CONNECT and its reply: the reply flushes what they hold
        self.connecting: set[str] = set()

    def busy(self, conn: Conn) -> bool:
        """Is `conn` held by a connect or a join under way (which will flush it itself)?"""
        return conn.sid in self.connecting or conn.sid in self._locks

    def forget(self, sid: str) -> None:
        self.connecting.discard(sid)
        self._locks.pop(sid, None)

    async def attach(self, conn: Conn, rooms: Sequence[str]) -> Position | None:
        """Put a new socket in its rooms; returns the bus position its session starts at."""
        await self._subscriptions.join(conn, rooms)
        try:
            return await self._backend.position()
        except BusUnavailable:
            return None

    async def recover(self, conn: Conn, spans: Sequence[Span]) -> None:
        """Put a restored socket back in its rooms, with each room's events after its start
        queued ahead of the live ones. A span with an end is a room left while away: replayed up
        to the leave, not rejoined.

        Raises HistoryLost when part of that history is gone.
        """
        await self._subscriptions.join(conn, [room for room, _, end in spans if end is None and room != EVERYONE])
        try:
            messages = await self._backend.history(spans)
        except BusUnavailable:
            messages = None
        if messages is None:
            raise HistoryLost("the history after this offset is gone")
        conn.pending = [out for _, out in self._replay(messages)] + (conn.pending or [])

    async def enter(self, conn: Conn, rooms: Sequence[str], since: Position | None) -> None:
        """Add rooms to a connected socket; with `since`, deliver what they got after it."""
        lock = self._locks.setdefault(conn.sid, asyncio.Lock())
        async with lock:
            if self._registry.get(conn.sid) is not conn:
                return
            fresh = [r for r in rooms if r not in conn.rooms]
            if not fresh:
                return
            if conn.pending is None:
                conn.pending = []
            history: list[Outgoing] = []
            try:
                await self._subscriptions.join(conn, fresh)
                if since is not None:
                    try:
                        messages = await self._backend.history([(room, since, None) for room in fresh])
                    except BusUnavailable:
                        messages = None
                    history = [out for _, out in self._replay(messages or [])]
            finally:
                conn.attach(history, self._counters)
            if since is None:
                try:
                    since = await self._backend.position()
                except BusUnavailable:
                    since = None
            for room in fresh:
                self._rooms_changed(conn, room, "j", since)
        if not lock.locked():
            self._locks.pop(conn.sid, None)

    def leave(self, conn: Conn, room: str, at: Position | None = None) -> None:
        """Take `conn` out of `room`; `at` is where on the bus it left (a producer's leave), kept
        in its session so that a recovery replays the room up to there."""
        if self._subscriptions.leave(conn, room):
            self._rooms_changed(conn, room, "l", at)
