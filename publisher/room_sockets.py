"""What a producer does to the sockets of a room rather than of one user: the operations of
socket.io's `io.to(room).socketsJoin(...)`, `socketsLeave`, `disconnectSockets`, and an emit
to several rooms except some (`io.to(a).to(b).except(c).emit`).

Mixins of `Publisher` and `AsyncPublisher` (they bring `_commands`, and `_sender` or
`_transport`): the user operations live in `publisher.client`, these in their own module. Every
check runs in `publisher.commands` first: a bad room costs no round trip. The sync ones run
through the publisher's ordered queue (`publisher.sender`), after the emits made before them.

A room control reaches the sockets connected at that moment, on every replica, as Node's
adapter does; a client away then (within its recovery window) comes back without the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from publisher.commands import Commands, scatter
from publisher.envelope import KIND_ROOM_JOIN, KIND_ROOM_KICK, KIND_ROOM_LEAVE, Position
from publisher.replies import positions as positions_at
from publisher.sender import Sender
from publisher.transports import AsyncRunner, SyncRunner


def _by_room(rooms: Sequence[str], positions: Sequence[str]) -> dict[str, str]:
    """{room: position} of the copies `Commands.scoped` made, one per room, in its order."""
    return dict(zip(rooms, positions, strict=True))


def _wanted(rooms: str | Iterable[str]) -> tuple[str, ...]:
    given = (rooms,) if isinstance(rooms, str) else tuple(rooms)
    return tuple(dict.fromkeys(given))


def _targets(wanted: tuple[str, ...] | None) -> list[str]:
    """The rooms `Commands.scoped` makes copies for, in its order (`*`: everyone)."""
    return ["*"] if wanted is None else sorted(set(wanted))


class RoomSockets:
    """The sync operations (`Publisher`)."""

    _commands: Commands
    _sender: Sender

    def emit_rooms(self, event: str, data: Any, rooms: str | Iterable[str] | None, *,
                   except_rooms: str | Iterable[str] = (), strict: bool | None = None) -> dict[str, str]:
        """Emit to every socket in any of `rooms` (None: every socket) and in none of
        `except_rooms`, once each however many of the rooms it is in. Returns {room: the
        event's position in it} (everyone's room is `*`), once Redis has them. One round trip
        (one call per slot on a cluster, as `emit_many`); at most 100 rooms of each kind."""
        wanted = None if rooms is None else _wanted(rooms)  # `rooms` may be read only once
        emits = self._commands.scoped(event, data, wanted, _wanted(except_rooms), strict)
        targets = _targets(wanted)

        def run(transport: SyncRunner) -> dict[str, str]:
            plan = self._commands.publish_all(emits, by_slot=transport.sharded)
            return _by_room(targets, scatter(plan, transport.run([c for c, _ in plan]), len(emits)))

        return self._sender.call(run)

    def _room_change(self, kind: str, room: str | None, rooms: str | Iterable[str] | None,
                     except_rooms: str | Iterable[str]) -> dict[str, str]:
        wanted = None if rooms is None else _wanted(rooms)
        unless = _wanted(except_rooms)

        def run(transport: SyncRunner) -> dict[str, str]:
            at: dict[str, Position] | None = None
            if wanted is not None:
                at = positions_at(wanted, transport.run(self._commands.positions(wanted)))
            transport.run((self._commands.room_control(kind, room, at, unless),))
            return {name: str(position) for name, position in (at or {}).items()}

        return self._sender.call(run)

    def sockets_join(self, room: str | None, rooms: str | Iterable[str], *,
                     except_rooms: str | Iterable[str] = ()) -> dict[str, str]:
        """Every socket connected now in `room` (None: every socket), and in none of
        `except_rooms`, enters `rooms` where the gateway's room policy allows it (never another
        user's room), and its session follows. Events of a room after the join reach it.
        Two round trips, as `join`; returns {room: its position at the join}."""
        return self._room_change(KIND_ROOM_JOIN, room, rooms, except_rooms)

    def sockets_leave(self, room: str | None, rooms: str | Iterable[str], *,
                      except_rooms: str | Iterable[str] = ()) -> dict[str, str]:
        """Every socket connected now in `room` (None: every socket), and in none of
        `except_rooms`, leaves `rooms` (never its own `user:<id>`). Returns {room: position}."""
        return self._room_change(KIND_ROOM_LEAVE, room, rooms, except_rooms)

    def disconnect_room(self, room: str | None, *, except_rooms: str | Iterable[str] = ()) -> None:
        """Disconnect every socket connected now in `room` (None: every socket) and in none of
        `except_rooms`, with a Socket.IO DISCONNECT (the client does not come back by itself;
        its recoverable session is dropped). Unlike `disconnect_user`, nobody is revoked."""
        self._room_change(KIND_ROOM_KICK, room, None, except_rooms)


class AsyncRoomSockets:
    """The asyncio operations (`AsyncPublisher`); see `RoomSockets`."""

    _commands: Commands
    _transport: AsyncRunner

    async def emit_rooms(self, event: str, data: Any, rooms: str | Iterable[str] | None, *,
                         except_rooms: str | Iterable[str] = (),
                         strict: bool | None = None) -> dict[str, str]:
        """See `Publisher.emit_rooms`."""
        wanted = None if rooms is None else _wanted(rooms)
        emits = self._commands.scoped(event, data, wanted, _wanted(except_rooms), strict)
        plan = self._commands.publish_all(emits, by_slot=self._transport.sharded)
        replies = await self._transport.run([c for c, _ in plan])
        return _by_room(_targets(wanted), scatter(plan, replies, len(emits)))

    async def _room_change(self, kind: str, room: str | None, rooms: str | Iterable[str] | None,
                           except_rooms: str | Iterable[str]) -> dict[str, str]:
        at: dict[str, Position] | None = None
        if rooms is not None:
            wanted = _wanted(rooms)
            at = positions_at(wanted, await self._transport.run(self._commands.positions(wanted)))
        await self._transport.run((self._commands.room_control(kind, room, at, _wanted(except_rooms)),))
        return {name: str(position) for name, position in (at or {}).items()}

    async def sockets_join(self, room: str | None, rooms: str | Iterable[str], *,
                           except_rooms: str | Iterable[str] = ()) -> dict[str, str]:
        """See `Publisher.sockets_join`."""
        return await self._room_change(KIND_ROOM_JOIN, room, rooms, except_rooms)

    async def sockets_leave(self, room: str | None, rooms: str | Iterable[str], *,
                            except_rooms: str | Iterable[str] = ()) -> dict[str, str]:
        """See `Publisher.sockets_leave`."""
        return await self._room_change(KIND_ROOM_LEAVE, room, rooms, except_rooms)

    async def disconnect_room(self, room: str | None, *,
                              except_rooms: str | Iterable[str] = ()) -> None:
        """See `Publisher.disconnect_room`."""
        await self._room_change(KIND_ROOM_KICK, room, None, except_rooms)
