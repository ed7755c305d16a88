"""A shard's channels going away and coming back: what they missed meanwhile is delivered.

Each room's cursor is where this replica stands in the room's stream. When the connection to a
shard drops (or a slot moves between shards), the rooms on it may miss messages: their cursors
are noted (`lost`). When their channels are about to be subscribed again, their sockets are
held (`restoring`); once the subscriptions are confirmed (`restored`), each room's stream is read
after the noted cursor and delivered, merged within each room with what arrived live meanwhile,
each socket dropping what it already has. Rooms of other shards are not touched.

A room whose replay cannot be exact (its position is gone: trimmed past, or the shard lost
writes in a failover) is not replayed short: the transports of its sockets are closed, so that
their clients reconnect and are told `recovered: false` (counted as `catchup_gap`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.bus.contract import Backend, BusUnavailable
from gateway.delivery.attach import Replay
from gateway.delivery.offsets import position_of
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from publisher.envelope import EVERYONE

log = logging.getLogger("gateway.delivery")


class CatchUp:
    """The half of the bus's sink that follows the state of its channels."""

    def __init__(self, registry: Registry, backend: Backend, counters: Counters, *, replay: Replay) -> None:
        self._registry = registry
        self._backend = backend
        self._counters = counters
        self._replay = replay
        # room -> its cursor when its channel was lost (or when a first subscription that was not
        # confirmed in time began restoring): kept until a catch-up from it is delivered
        self._noted: dict[str, int | None] = {}
        self._held: dict[str, list[Conn]] = {}  # room -> the sockets held for its catch-up
        self._turn: dict[str, int] = {}  # room -> bumped at every lost/restoring/gone: a restore in flight is stale

    def _members(self, room: str) -> list[Conn]:
        if room == EVERYONE:
            return list(self._registry.by_sid.values())
        return list(self._registry.rooms.get(room, {}).values())

    def _bump(self, room: str) -> None:
        self._turn[room] = self._turn.get(room, 0) + 1

    def lost(self, rooms: Sequence[str]) -> None:
        """Their channels are down: note where each room stood (the first time only). Sockets
        held for a catch-up that will not come now are let go with their transports closed:
        what they missed cannot be delivered live any more, their clients reconnect and recover
        (exactly, or told)."""
        for room in rooms:
            self._bump(room)
            if room not in self._noted:
                self._noted[room] = self._registry.cursor.get(room)
            held = self._held.pop(room, ())
            if held:
                self._counters.bus_event("catchup_gap")
            for conn in held:
                conn.release([], self._counters)
                conn.eio.close_transport()

    def restoring(self, rooms: Sequence[str]) -> None:
        """Their channels are being subscribed again: hold their sockets' live events."""
        for room in rooms:
            self._bump(room)
            # a first subscription not confirmed in time was never `lost`: start from the cursor
            # read when it began (nothing can have been received since)
            self._noted.setdefault(room, self._registry.cursor.get(room))
            if room in self._held:
                continue
            members = self._members(room)
            for conn in members:
                conn.hold()
            self._held[room] = members

    def gone(self, room: str) -> None:
        """The room has no local socket left and its channel is unsubscribed: no restore will
        come for it. Let its held sockets go, and forget where it stood."""
        self._bump(room)
        self._noted.pop(room, None)
        for conn in self._held.pop(room, ()):
            conn.release([], self._counters)

    async def restored(self, rooms: Sequence[str]) -> None:
        """Confirmed again: each room's events after its noted cursor, then live ones."""
        turns = {room: self._turn.get(room, 0) for room in rooms}
        spans = []
        for room in rooms:
            noted = self._noted.get(room)
            if noted is not None:
                spans.append((room, position_of(noted), None))
        replies: dict[str, list[Outgoing] | None] = {}
        if spans:
            try:
                found = await self._backend.history(spans)
            except BusUnavailable as exc:
                log.warning("bus catch-up impossible: %s", exc)
                found = {}
            for room, _, _ in spans:
                entries = found.get(room)
                replies[room] = self._replay(room, entries) if entries is not None else None
        for room in rooms:
            if self._turn.get(room, 0) != turns[room]:
                continue  # lost, restoring or gone again meanwhile: that call took its sockets
            self._noted.pop(room, None)
            held = self._held.pop(room, [])
            outs = replies.get(room, [])
            if outs is None:  # cannot be exact: never short, the clients are told on reconnection
                self._counters.bus_event("catchup_gap")
                log.warning("bus catch-up impossible: the history of a room was lost meanwhile",
                            extra={"room_sockets": len(held)})
                for conn in held:
                    conn.release([], self._counters)
                    conn.eio.close_transport()
                continue
            mine = [out for out in outs if out.room == room]  # once per room, not per held socket
            for conn in held:
                still = room == EVERYONE or room in conn.rooms
                conn.release(mine if still else [], self._counters)  # release copies what it is given
