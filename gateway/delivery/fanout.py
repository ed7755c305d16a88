"""Bus messages in, socket writes out: the hot path.

A bus message is decoded once, turned into one `Outgoing` (the packet's shared part built once),
and written to the room's local sockets by a loop over a dict: no task, no queue per recipient.
Each message moves the room's cursor (where a socket entering the room starts). Control
messages (a producer's join, leave, kick, of a user's sockets or of a room's) are handed to the
core, which owns rooms. An event sent to several rooms or except some carries its `Scope`,
which each socket applies when the copy is written (`Conn.deliver`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from gateway.delivery.frames import event_head
from gateway.delivery.offsets import component, key_of
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from publisher.envelope import EVERYONE, Control, EnvelopeError, Event, Position, RoomControl, decode

log = logging.getLogger("gateway.delivery")


def outgoing(event: Event, with_offset: bool, *, replay: bool = False) -> Outgoing:
    """What every local recipient of `event` gets (an offset only when recovery is on)."""
    room = event.room if event.room is not None else EVERYONE
    return Outgoing(room, key_of(event.ms, event.seq), event.name,
                    event_head(event.name, event.data, with_offset=with_offset),
                    component(room, event.ms, event.seq) if with_offset else b"", event.sent_ms, replay,
                    event.scope)


def from_history(room: str, entries: Iterable[tuple[Position, bytes]], counters: Counters, *,
                 with_offset: bool) -> list[Outgoing]:
    """A room's stored events, for a replay; an entry that does not decode is counted and
    skipped (a replay is never refused for one bad entry another producer wrote)."""
    out = []
    for at, raw in entries:
        try:  # stored without its position, which is the entry's ID
            message = decode(raw[:-1] + b',"o":"' + str(at).encode() + b'"}')
        except EnvelopeError:
            counters.error("bus_bad_envelope")
            continue
        if isinstance(message, Event) and (message.room if message.room is not None else EVERYONE) == room:
            out.append(outgoing(message, with_offset, replay=True))
    return out


class Fanout:
    """Decodes what the bus brings and writes events to the local sockets of their room."""

    def __init__(self, registry: Registry, counters: Counters, *, with_offset: bool,
                 on_control: Callable[[Control | RoomControl], None]) -> None:
        self._registry = registry
        self._counters = counters
        self._with_offset = with_offset
        self._on_control = on_control

    def on_message(self, raw: bytes) -> None:
        try:
            message = decode(raw)
        except EnvelopeError as exc:
            self._counters.error("bus_bad_envelope")
            log.warning("bus message refused: %s", exc)
            return
        if isinstance(message, Event):
            self._counters.bus_received("event")
            self.deliver(message)
        else:
            self._counters.bus_received("control")
            self._on_control(message)

    def deliver(self, event: Event) -> None:
        if event.room is None:
            targets: Iterable[Conn] = self._registry.by_sid.values()
        else:
            members = self._registry.rooms.get(event.room)
            if not members:  # a message still in flight after the room's last socket left
                return
            targets = members.values()
        out = outgoing(event, self._with_offset)
        cursor = self._registry.cursor
        if out.key > cursor.get(out.room, -1):
            cursor[out.room] = out.key
        written = 0
        for conn in targets:
            if conn.deliver(out):
                written += 1
        if written:
            self._counters.sent(out.event, written, out.t_ms)
