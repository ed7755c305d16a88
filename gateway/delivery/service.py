"""The specification's WebSocketService, as a Python API of the gateway.

`send_to_user`, `send_to_room` and `broadcast_to_all` publish through the bus, so an event sent
from any replica reaches every replica's sockets, with a position and history like a producer's.
When the bus is down they still deliver to this replica's own sockets (without position: such
an event cannot be replayed), and say so by returning None instead of an offset.
`join_room`/`leave_room` go through the room policy; `connected_users` is this replica's registry.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.bus.contract import BusUnavailable
from gateway.delivery.core import DeliveryCore
from gateway.policy.rooms import may_join, may_leave
from publisher.events import check_event_name, sanitize
from publisher.rooms import check_room, user_room

log = logging.getLogger("gateway.delivery.service")


class WebSocketService:
    def __init__(self, core: DeliveryCore, max_payload_bytes: int) -> None:
        self.core = core
        self.max_payload_bytes = max_payload_bytes

    async def send_to_user(self, user_id: str | int, event: str, data: Any) -> str | None:
        return await self._send(event, data, user_room(user_id))

    async def send_to_room(self, room: str, event: str, data: Any) -> str | None:
        return await self._send(event, data, check_room(room))

    async def broadcast_to_all(self, event: str, data: Any) -> str | None:
        return await self._send(event, data, None)

    async def _send(self, event: str, data: Any, room: str | None) -> str | None:
        check_event_name(event)
        sanitize(data, self.max_payload_bytes)  # raises InvalidPayload naming the field
        try:
            return await self.core.publish(event, data, room)
        except BusUnavailable:
            n = self.core.deliver_locally(event, data, room)
            log.warning("bus down: event delivered to this replica only", extra={"event": event, "recipients": n})
            return None

    async def join_room(self, sid: str, room: str) -> None:
        conn = self.core.registry.get(sid)
        if conn is None:
            raise KeyError(f"no socket {sid} on this replica")
        if not may_join(conn.identity, room):
            raise PermissionError(f"user {conn.identity.user_id} may not be in {room}")
        await self.core.enter(conn, {room: None})

    async def leave_room(self, sid: str, room: str) -> None:
        conn = self.core.registry.get(sid)
        if conn is None:
            raise KeyError(f"no socket {sid} on this replica")
        if not may_leave(conn.identity, room):
            raise PermissionError(f"a socket cannot leave its own room {room}")
        self.core.leave(conn, room)

    def connected_users(self) -> dict[str, int]:
        """User id -> number of sockets on this replica."""
        return {room[5:]: len(members) for room, members in self.core.registry.rooms.items()
                if room.startswith("user:")}
