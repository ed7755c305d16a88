"""Everything between the bus and the sockets of this replica, assembled.

The jobs live in their own modules: `fanout` (bus messages in, socket writes out), `subscriptions`
(rooms and the channels they need), `attach` (entering rooms without losing or repeating an
event: connect, recovery, a producer's join), `catchup` (the bus going away and coming back).
`DeliveryCore` wires them, is the bus's `BusSink`, carries out control messages, and is the one
place where a socket is registered and forgotten, so presence is decided once.

The core knows python-socketio only through `ports.SocketLayer` (handed in by the server that
owns it) and each socket only through `ports.SocketWriter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any

from gateway.bus.contract import Backend, Span
from gateway.delivery.attach import Attacher, HistoryLost, RoomsChanged
from gateway.delivery.catchup import CatchUp
from gateway.delivery.fanout import Fanout, from_history
from gateway.delivery.frames import eio_message_frame, event_packet
from gateway.delivery.ports import Counters, SocketLayer
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.delivery.subscriptions import Subscriptions
from gateway.policy.rooms import may_join, may_leave
from publisher.envelope import (
    KIND_JOIN,
    KIND_KICK,
    KIND_LEAVE,
    KIND_ROOM_JOIN,
    KIND_ROOM_KICK,
    Control,
    Position,
    RoomControl,
)
from publisher.rooms import user_room

__all__ = ["DeliveryCore", "HistoryLost"]

# A room's control acts on each socket as a user's join, leave or kick does.
_AS_USER_KIND = {KIND_ROOM_JOIN: KIND_JOIN, KIND_ROOM_KICK: KIND_KICK}


class DeliveryCore:
    def __init__(self, backend: Backend, counters: Counters, sockets: SocketLayer, *,
                 recovery: bool, rooms_changed: RoomsChanged) -> None:
        self.backend = backend
        self.registry = Registry()
        self._counters = counters
        self._sockets = sockets
        self._with_offset = recovery
        self._catchup = CatchUp(self.registry, backend, counters, replay=self._replay)
        self._subscriptions = Subscriptions(self.registry, backend, on_gone=self._catchup.gone)
        self._attacher = Attacher(self.registry, self._subscriptions, backend, counters,
                                  replay=self._replay, rooms_changed=rooms_changed)
        self._fanout = Fanout(self.registry, counters, with_offset=recovery, on_control=self._control)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- sockets in and out: presence is decided here ---------------------------------------

    def register(self, conn: Conn, expires_at: float | None) -> None:
        """A socket whose CONNECT is under way: its events are held until `accepted`."""
        self._attacher.connecting.add(conn.sid)
        if self.registry.add(conn, expires_at):
            self.backend.set_online(conn.identity.user_id, True)

    def accepted(self, conn: Conn) -> None:
        """The CONNECT reply is written: what waited while the socket was attached follows."""
        self._attacher.connecting.discard(conn.sid)
        conn.release([], self._counters)

    def forget(self, sid: str) -> Conn | None:
        """The socket is gone, whatever the reason: rooms, channels and presence follow."""
        self._attacher.forget(sid)
        removed = self._subscriptions.drop(sid)
        if removed is None:
            return None
        if removed.user_offline:
            self.backend.set_online(removed.conn.identity.user_id, False)
        return removed.conn

    @property
    def connecting(self) -> set[str]:
        """sids whose CONNECT reply is not written yet."""
        return self._attacher.connecting

    def get(self, sid: str) -> Conn | None:
        return self.registry.get(sid)

    def user_sockets(self, user_id: str) -> int:
        return self.registry.user_sockets(user_id)

    def __len__(self) -> int:
        return len(self.registry)

    # -- rooms -------------------------------------------------------------------------------

    async def attach_rooms(self, conn: Conn, rooms: Sequence[str]) -> dict[str, Position] | None:
        return await self._attacher.attach(conn, rooms)

    async def recover_rooms(self, conn: Conn, spans: Sequence[Span], offset: Mapping[str, Position]) -> None:
        await self._attacher.recover(conn, spans, offset)

    def enter(self, conn: Conn, rooms: Mapping[str, Position | None]) -> Coroutine[Any, Any, None]:
        """The socket's turn is taken at the call, so joins and leaves apply in the order called."""
        return self._attacher.enter(conn, rooms)

    def leave(self, conn: Conn, room: str, at: Position | None = None) -> None:
        self._attacher.leave(conn, room, at)

    # -- the bus's sink ---------------------------------------------------------------------

    def on_message(self, raw: bytes) -> None:
        self._fanout.on_message(raw)

    def channels_lost(self, rooms: Sequence[str]) -> None:
        self._catchup.lost(rooms)

    def channels_restoring(self, rooms: Sequence[str]) -> None:
        self._catchup.restoring(rooms)

    async def channels_restored(self, rooms: Sequence[str]) -> None:
        await self._catchup.restored(rooms)

    def begin_batch(self) -> None:
        self._sockets.begin_batch()

    def end_batch(self) -> None:
        self._sockets.end_batch()

    def heartbeat_snapshot(self) -> tuple[list[str], list[tuple[str, str]]]:
        sessions = [(conn.pid, conn.identity.user_id) for conn in self.registry.by_sid.values()
                    if conn.pid is not None]
        return self.registry.online_users(), sessions

    def _control(self, control: Control | RoomControl) -> None:
        """A producer's join, leave or kick about the sockets of `control.user`, or about this
        replica's sockets in `control.room` (all of them for None) that are in no except room.

        The same path either way: the room policy decides what each socket may enter, and
        `enter` / `leave` update its session record as for a user's join or leave."""
        if isinstance(control, RoomControl):
            if control.room is None:
                found: Iterable[Conn] = self.registry.by_sid.values()
            else:
                found = self.registry.rooms.get(control.room, {}).values()
            targets = [conn for conn in found if control.excluded.isdisjoint(conn.rooms)]
            kind = _AS_USER_KIND.get(control.kind, KIND_LEAVE)
        else:
            targets = list(self.registry.rooms.get(user_room(control.user), {}).values())
            kind = control.kind
            if kind == KIND_KICK:
                for conn in targets:
                    conn.pid = None  # its sessions were deleted by the publisher: never save it again
        for conn in targets:
            if kind == KIND_KICK:
                # A room's kick keeps `pid`: the socket layer drops its session as it goes.
                self._spawn(self._sockets.kick(conn, "kicked"))
            elif kind == KIND_JOIN:
                rooms: dict[str, Position | None] = {
                    room: at for room, at in control.rooms if may_join(conn.identity, room)}
                if rooms:
                    self._spawn(self.enter(conn, rooms))
            else:
                for room, at in control.rooms:
                    if may_leave(conn.identity, room):
                        self.leave(conn, room, at)

    def _replay(self, room: str, entries: Iterable[tuple[Position, bytes]]) -> list[Outgoing]:
        return from_history(room, entries, self._counters, with_offset=self._with_offset)

    # -- outbound ----------------------------------------------------------------------------

    async def publish(self, event: str, data: Any, room: str | None) -> str:
        return await self.backend.publish_event(event, data, room)

    def deliver_locally(self, event: str, data: Any, room: str | None) -> int:
        """When the bus is down: write to this replica's sockets, without position or history."""
        text = event_packet(event, data, None)
        frame = eio_message_frame(text)
        targets = (self.registry.by_sid.values() if room is None
                   else list(self.registry.rooms.get(room, {}).values()))
        n = 0
        for conn in targets:
            if conn.pending is None:
                conn.eio.push_message(text, frame)
                n += 1
        self._counters.sent(event, n, time.time() * 1000)
        return n

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
