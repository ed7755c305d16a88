"""Bus messages in, socket writes out: the hot path.

A bus message is decoded once, turned into one `Outgoing` (the frame built once), and written
to the room's local sockets by a loop over a dict: no task, no queue per recipient. Control
messages (a producer's join, leave, kick) are handed to the core, which owns rooms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from gateway.bus.contract import order_key
from gateway.delivery.catchup import BusCursor
from gateway.delivery.frames import eio_message_frame, event_packet
from gateway.delivery.ports import Counters
from gateway.delivery.registry import Conn, Outgoing, Registry
from publisher.envelope import Control, EnvelopeError, Event, decode

log = logging.getLogger("gateway.delivery")


def outgoing(event: Event, with_offset: bool, *, replay: bool = False) -> Outgoing:
    """The bytes every local recipient of `event` gets (the offset only when recovery is on)."""
    text = event_packet(event.ev, event.d, event.o if with_offset else None)
    return Outgoing(order_key(event.ms, event.seq), event.ev, text, eio_message_frame(text), event.t, replay)


def from_history(messages: Iterable[bytes], counters: Counters, *, with_offset: bool
                 ) -> list[tuple[str | None, Outgoing]]:
    """Stored events as (room, Outgoing), for a replay; what does not decode is counted and
    skipped (a replay is never refused for one bad entry another producer wrote)."""
    out = []
    for raw in messages:
        try:
            message = decode(raw)
        except EnvelopeError:
            counters.error("bus_bad_envelope")
            continue
        if isinstance(message, Event):
            out.append((message.r, outgoing(message, with_offset, replay=True)))
    return out


class Fanout:
    """Decodes what the bus brings and writes events to the local sockets of their room."""

    def __init__(self, registry: Registry, cursor: BusCursor, counters: Counters, *, with_offset: bool,
                 on_control: Callable[[Control], None]) -> None:
        self._registry = registry
        self._cursor = cursor
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
        self._cursor.received(message)
        if isinstance(message, Event):
            self._counters.bus_received("event")
            self.deliver(message)
        else:
            self._counters.bus_received("control")
            self._on_control(message)

    def deliver(self, event: Event) -> None:
        room = event.r
        if room is None:
            targets: Iterable[Conn] = self._registry.by_sid.values()
        else:
            members = self._registry.rooms.get(room)
            if not members:
                return
            targets = members.values()
        out = outgoing(event, self._with_offset)
        written = 0
        for conn in targets:
            if conn.deliver(out):
                written += 1
        if written:
            self._counters.sent(out.event, written, out.t_ms)
