"""The bus going away and coming back: what this replica missed meanwhile is delivered.

While the pub/sub connection is down, publishes go on elsewhere. On reconnection every local
socket's live events are held; once every channel is confirmed again, the events of the local
rooms after the newest position this replica knew are read from history and delivered, merged
in order with what arrived live meanwhile, each socket dropping what it already has
(`Conn.deliver`). If Redis lost its data meanwhile (a new epoch), every position of the new
epoch is newer than anything delivered: it is replayed from its start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.bus.contract import EVERYONE, Backend, BusUnavailable, Position, order_key
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from publisher.envelope import Control, Event

log = logging.getLogger("gateway.delivery")


def _by_key(out: Outgoing) -> int:
    return out.key


class BusCursor:
    """Where this replica stands on the bus: the epoch, the newest message received, and the
    position read at the last (re)subscription."""

    def __init__(self, registry: Registry, counters: Counters) -> None:
        self._registry = registry
        self._counters = counters
        self.epoch: str | None = None
        self.last: Event | Control | None = None
        self.baseline: Position | None = None

    def received(self, message: Event | Control) -> None:
        if message.epoch != self.epoch:
            self.new_epoch(message.epoch)
        self.last = message

    def new_epoch(self, epoch: str) -> None:
        """Redis lost its data (restart, flush): positions start again from 1.

        Every socket's dedup mark is reset, or the new, smaller positions would be taken for
        events it already has.
        """
        if self.epoch is not None:
            log.warning("bus epoch changed: redis lost its history", extra={"epoch": epoch})
            self._counters.bus_event("epoch_change")
            for conn in self._registry.by_sid.values():
                conn.last_key = 0
        self.epoch = epoch

    def known(self) -> Position | None:
        """The newest position this replica knows: its last message, or its last baseline."""
        last, baseline = self.last, self.baseline
        if last is None:
            return baseline
        if baseline is not None and baseline.epoch == last.epoch and baseline.key > order_key(last.ms, last.seq):
            return baseline
        if baseline is not None and baseline.epoch != last.epoch and baseline.epoch == self.epoch:
            return baseline
        return Position(last.epoch, last.ms, last.seq)


class CatchUp:
    """The `BusSink` half that handles the bus's connection state (see the module docstring)."""

    def __init__(self, registry: Registry, cursor: BusCursor, backend: Backend, counters: Counters, *,
                 releasable: Callable[[Conn], bool],
                 replay: Callable[[list[bytes]], list[tuple[str | None, Outgoing]]]) -> None:
        self._registry = registry
        self._cursor = cursor
        self._backend = backend
        self._counters = counters
        self._releasable = releasable  # held for the bus, not by a connect or a join under way
        self._replay = replay

    def hold(self) -> None:
        """Connected again, channels not yet confirmed: hold every socket's live events."""
        for conn in self._registry.by_sid.values():
            if conn.pending is None:
                conn.pending = []

    async def resume(self) -> None:
        """Every channel confirmed: deliver what was published while away, then live events."""
        conns = [c for c in self._registry.by_sid.values() if c.pending is not None]
        since = self._cursor.known()
        try:
            current: Position | None = await self._backend.position()
        except BusUnavailable:
            current = None
        by_room: dict[str, list[Outgoing]] = {}
        if current is not None and since is not None and conns:
            if since.epoch != current.epoch:
                self._cursor.new_epoch(current.epoch)
                since = Position(current.epoch, 0, 0)
            rooms = [*sorted({r for c in conns for r in c.rooms}), EVERYONE]
            try:
                messages = await self._backend.history([(room, since, None) for room in rooms])
            except BusUnavailable:
                messages = None
            if messages is None:
                self._counters.bus_event("catchup_gap")
                log.warning("bus catch-up impossible: history lost while disconnected")
            for room, out in self._replay(messages or []):
                by_room.setdefault(room if room is not None else EVERYONE, []).append(out)
        if current is not None:
            self._cursor.baseline = current
        for conn in conns:
            if self._releasable(conn):
                mine = [o for r in (*conn.rooms, EVERYONE) for o in by_room.get(r, ())]
                conn.attach(sorted(mine, key=_by_key), self._counters)

    def release(self) -> None:
        """The bus is down: let held sockets go, local delivery must keep working."""
        for conn in self._registry.by_sid.values():
            if conn.pending is not None and self._releasable(conn):
                conn.attach([], self._counters)
