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
        self._noted: dict[str, int | None] = {}  # room -> its cursor when its channel was lost
        self._held: dict[str, list[Conn]] = {}  # room -> the sockets held for its catch-up

    def _members(self, room: str) -> list[Conn]:
        if room == EVERYONE:
            return list(self._registry.by_sid.values())
        return list(self._registry.rooms.get(room, {}).values())

    def lost(self, rooms: Sequence[str]) -> None:
        """Their channels are down: note where each room stood (the first time only), and let
        go any socket held for a catch-up that will not come now."""
        for room in rooms:
            if room not in self._noted:
                self._noted[room] = self._registry.cursor.get(room)
            for conn in self._held.pop(room, ()):
                conn.release([], self._counters)

    def restoring(self, rooms: Sequence[str]) -> None:
        """Their channels are being subscribed again: hold their sockets' live events."""
        for room in rooms:
            if room in self._held:
                continue
            members = self._members(room)
            for conn in members:
                conn.hold()
            self._held[room] = members

    async def restored(self, rooms: Sequence[str]) -> None:
        """Confirmed again: each room's events after its noted cursor, then live ones."""
        spans = []
        for room in rooms:
            noted = self._noted.pop(room, None)
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
            for conn in held:
                conn.release([out for out in outs if out.room == room], self._counters)
