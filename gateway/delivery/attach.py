"""Putting a socket into rooms without losing or repeating an event.

A socket entering rooms (a new connection, a recovery, a producer's `join`) is held
(`Conn.hold`) while its channels are subscribed and history is read, then gets both, merged in
order within each room, once each (`Conn.release`). A new socket starts, in each room, at the
room's cursor once its subscription is confirmed: every event after it reaches the socket live,
and a recovery replays from there what the client did not process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bus.contract import Backend, BusUnavailable, Span
from gateway.delivery.offsets import component, key_of, position_of
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.delivery.subscriptions import Subscriptions
from publisher.envelope import EVERYONE, Position

# Called when a connected socket's rooms change: (conn, its rooms once the change is made, the
# room, "j" joined | "l" left, where in the room's stream if known). The session record follows
# (`sio.server`). The rooms are taken when the change is made: a join may finish after the
# socket's transport dropped, when `conn.rooms` is already emptied.
RoomsChanged = Callable[[Conn, list[str], str, str, Position | None], None]
Replay = Callable[[str, Iterable[tuple[Position, bytes]]], list[Outgoing]]


@dataclass(slots=True)
class _Turn:
    """The joins and leaves of one socket waiting or under way, taken in order."""

    lock: asyncio.Lock
    waiting: int = 0
    issued: int = 0  # tickets handed out, joins and leaves alike, in the order they came
    left: dict[str, int] = field(default_factory=dict)  # room -> ticket of its latest leave


class HistoryLost(Exception):
    """A recovery cannot be complete: events the client missed are gone, or cannot be read."""


class Attacher:
    def __init__(self, registry: Registry, subscriptions: Subscriptions, backend: Backend, counters: Counters, *,
                 replay: Replay, rooms_changed: RoomsChanged) -> None:
        self._registry = registry
        self._subscriptions = subscriptions
        self._backend = backend
        self._counters = counters
        self._replay = replay
        self._rooms_changed = rooms_changed
        # A socket's joins wait on the bus (subscription, history) and take turns; a leave is
        # applied at once (events after it must not reach the socket) and ticketed, so that a
        # join still under way that came before it does not put the socket back in the room.
        self._turns: dict[str, _Turn] = {}
        # sids between their CONNECT and its reply: the reply releases what they hold
        self.connecting: set[str] = set()

    def forget(self, sid: str) -> None:
        self.connecting.discard(sid)
        self._turns.pop(sid, None)

    def _queue(self, conn: Conn) -> tuple[_Turn, int]:
        """Take the socket's next turn and ticket now, synchronously: the order of the calls is
        the order of the turns, whenever the coroutines that wait for them start running."""
        turn = self._turns.setdefault(conn.sid, _Turn(asyncio.Lock()))
        turn.waiting += 1
        turn.issued += 1
        return turn, turn.issued

    @contextlib.asynccontextmanager
    async def _turn(self, conn: Conn, turn: _Turn) -> AsyncIterator[bool]:
        """Wait for the socket's earlier joins and leaves; yields whether it is still connected."""
        try:
            async with turn.lock:
                yield self._registry.get(conn.sid) is conn
        finally:
            turn.waiting -= 1
            if not turn.waiting and self._turns.get(conn.sid) is turn:
                del self._turns[conn.sid]


    async def _starts(self, conn: Conn, rooms: Sequence[str]) -> dict[str, Position]:
        """Join `rooms` (and follow EVERYONE), then where the socket starts in each: the
        rooms' cursors. Raises BusUnavailable when one is unknown."""
        await self._subscriptions.join(conn, rooms)
        cursor = self._registry.cursor
        if EVERYONE not in cursor:
            await self._subscriptions.read_positions([EVERYONE])
        starts = {}
        for room in (*rooms, EVERYONE):
            key = cursor.get(room)
            if key is None:
                raise BusUnavailable(f"the position of {room} is unknown")
            starts[room] = position_of(key)
            if room not in conn.positions:  # a restored socket keeps its replay's positions
                conn.positions[room] = key
        return starts

    async def attach(self, conn: Conn, rooms: Sequence[str]) -> dict[str, Position] | None:
        """Put a new socket in its rooms; where its session starts in each room (and in
        EVERYONE), or None when the bus cannot say (no recoverable session then)."""
        try:
            return await self._starts(conn, rooms)
        except BusUnavailable:
            return None

    async def recover(self, conn: Conn, spans: Sequence[Span], offset: Mapping[str, Position]) -> None:
        """Put a restored socket back in its rooms, each room's events after its span's start
        held ahead of the live ones. A span with an end is a room left while away: replayed up
        to the leave, not rejoined. `offset` is what the client's offset said, per room: the
        socket's next offsets carry it on.

        Raises HistoryLost when any room's replay could be short."""
        rooms = [room for room, _, end in spans if end is None and room != EVERYONE]
        try:
            await self._subscriptions.join(conn, rooms)
            replies = await self._backend.history(spans)
        except BusUnavailable as exc:
            raise HistoryLost(f"the bus cannot answer: {exc}") from None
        short = sorted(room for room, entries in replies.items() if entries is None)
        if short or len(replies) != len(spans):
            raise HistoryLost(f"the history of {', '.join(short) or 'a room'} after the client's position is gone")
        for room, start, _ in spans:
            key = key_of(start.ms, start.seq)
            if key > conn.positions.get(room, -1):
                conn.positions[room] = key
        conn.components.update(
            (room, component(room, at.ms, at.seq)) for room, at in offset.items() if room in replies)
        held: list[Outgoing] = []
        for room, entries in replies.items():
            held.extend(self._replay(room, entries or ()))
        if conn.pending is None:
            conn.pending = []
        conn.pending[:0] = held

    def enter(self, conn: Conn, rooms: Mapping[str, Position | None]) -> Coroutine[Any, Any, None]:
        """Add rooms to a connected socket, in its turn (taken now); await or spawn the result.
        A room given with a position (a producer's join, read on the room's shard before the
        join was published) gets its events after it; one without starts at its cursor (the
        API's join)."""
        return self._enter(conn, rooms, *self._queue(conn))

    async def _enter(self, conn: Conn, rooms: Mapping[str, Position | None], turn: _Turn, ticket: int) -> None:
        def left_since(room: str) -> bool:
            return turn.left.get(room, 0) > ticket

        async with self._turn(conn, turn) as connected:
            if not connected:
                return
            fresh = [r for r in rooms if r not in conn.rooms and not left_since(r)]
            if not fresh:
                return
            conn.hold()
            history: list[Outgoing] = []
            starts: dict[str, Position | None] = {}
            rooms_now: list[str] = []
            try:
                await self._subscriptions.join(conn, fresh)
                rooms_now = list(conn.rooms)
                since = {room: at for room in fresh if (at := rooms[room]) is not None}
                if since:
                    replies = await self._backend.history([(room, at, None) for room, at in since.items()])
                    for room, entries in replies.items():
                        if left_since(room):  # left meanwhile: what it replays may follow the leave
                            continue
                        if entries is None:  # never short: its client reconnects and is told
                            self._counters.bus_event("join_gap")
                            conn.eio.close_transport()
                        history.extend(self._replay(room, entries or ()))
                for room in fresh:
                    at = rooms[room]
                    key = key_of(at.ms, at.seq) if at is not None else self._registry.cursor.get(room)
                    if key is not None and key > conn.positions.get(room, -1):
                        conn.positions[room] = key
                    starts[room] = position_of(key) if key is not None else None
            except BusUnavailable:
                # Joined all the same, but what came between the join and the subscription
                # cannot be read: never short, its client reconnects and is told.
                if any(rooms[room] is not None for room in fresh):
                    self._counters.bus_event("join_gap")
                    conn.eio.close_transport()
            finally:
                for room in fresh:
                    if left_since(room):  # the leave came first to the socket, but after this join
                        self._subscriptions.leave(conn, room)
                conn.release(history, self._counters)
            if rooms_now:
                rooms_now = [r for r in rooms_now if not left_since(r)]
            for room in fresh if rooms_now else ():
                if not left_since(room):
                    self._rooms_changed(conn, rooms_now, room, "j", starts.get(room))

    def leave(self, conn: Conn, room: str, at: Position | None = None) -> None:
        """Take `conn` out of `room` now; `at` is where in the room's stream it left (a
        producer's leave), kept in its session so that a recovery replays the room up to there.
        A join of the room under way, that came before, will not put it back."""
        turn = self._turns.get(conn.sid)
        if turn is not None:
            turn.issued += 1
            turn.left[room] = turn.issued
        if self._subscriptions.leave(conn, room):
            if at is None:
                key = conn.positions.get(room)
                at = position_of(key) if key is not None else None
            self._rooms_changed(conn, list(conn.rooms), room, "l", at)
