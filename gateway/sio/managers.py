"""python-socketio's client manager, with rooms and delivery answered by the delivery core.

Built on `socketio.AsyncManager` (the in-process manager) for every deployment: the cross-replica
part is the bus (`gateway.bus`), not python-socketio's pub/sub managers, whose one-channel
protocol has every replica decode every message. python-socketio keeps only its own bookkeeping
here (each socket in the namespace's `None` room and its sid room), which `server.py` needs
for `sid_from_eio_sid`, acks and disconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import socketio

from gateway.delivery.core import DeliveryCore
from gateway.policy.rooms import may_join, may_leave


class NotificationManager(socketio.AsyncManager):  # type: ignore[misc]
    def __init__(self, core: DeliveryCore, on_gone: Callable[[str], None]) -> None:
        super().__init__()
        self.core = core
        self._on_gone = on_gone  # every disconnect, whatever its cause, passes here

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        """`sio.emit(...)` from application code: through the bus, like any producer."""
        target = to or room
        if callback is not None or skip_sid is not None:
            raise ValueError("callbacks and skip_sid are not supported by the notification bus")
        if isinstance(target, list | tuple):
            for one in target:
                await self.core.publish(event, data, one)
            return
        await self.core.publish(event, data, target)

    async def enter_room(self, sid: str, namespace: str, room: str, eio_sid: str | None = None) -> None:
        if room == sid or room is None:  # python-socketio's own bookkeeping rooms
            await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
            return
        conn = self.core.get(sid)
        if conn is None:
            raise ValueError(f"{sid} is not connected to this replica")
        if not may_join(conn.identity, room):
            raise PermissionError(f"room {room!r} is not allowed for user {conn.identity.user_id}")
        await self.core.enter(conn, {room: None})

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        conn = self.core.get(sid)
        if conn is None or not may_leave(conn.identity, room):
            return
        self.core.leave(conn, room)

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        conn = self.core.get(sid)
        return sorted(conn.rooms) if conn is not None else []

    def get_participants(self, namespace: str, room: str) -> Iterator[tuple[str, str]]:
        for conn in self.core.registry.members(room):
            yield conn.sid, conn.eio_sid

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's version scans every room of the namespace for the sid, which is
        quadratic in a disconnect storm; here a socket is only ever in its own two rooms."""
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        for room in (sid, None):
            members = rooms.get(room)
            if members is not None and sid in members:
                del members[sid]
                if not members:
                    del rooms[room]
        self.callbacks.pop(sid, None)
        for table in (self.pending_connect, self.pending_disconnect):
            waiting = table.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del table[namespace]
        if not rooms:
            del self.rooms[namespace]

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        return bool(self.is_connected(sid, namespace))

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Every way out goes through here: the server forgets the socket's rooms and session."""
        self._on_gone(sid)
        self.basic_disconnect(sid, namespace)
