"""Connection state recovery, as socket.io-client >= 4.6 asks for it, on any replica.

The protocol. The CONNECT reply carries a private session id `pid`; every event carries its
offset as a last string argument; a client that lost its transport reconnects with
`{pid, offset}` in its CONNECT auth. We answer with the same sid and pid (the client then sets
`socket.recovered`), the same rooms, and every event of those rooms that it did not process, in
order within each room, once each, before any newer event. Or, when that cannot be done in
full, with a new sid and pid: `recovered === false`, never a silent gap.

Positions are per room (docs/wire-protocol.md, "Positions"): there is no clock across rooms, so
the offset is the socket's position vector (`offsets`): for each room in which it received
something, the last entry it was given. A room without a component is replayed from where the
session entered it (`starts` in the session record, the room's position once its subscription
was confirmed: nothing after it was missed live). So for each room the replay is the stream
after `max(offset component, start)`, up to the leave for a room left while away (`left`).

Why that is exactly what the client missed: within a room, a replica receives the room's
messages on one subscription in stream order and writes them to a socket in that order
(dropping any entry at or before what it already gave the socket). A client that processed the
entry at position p of a room has every entry of that room up to p and none after.

When not to recover. A position that is an entry must still be in its stream (trimming past it,
or a stream lost and grown again, removes it); a position taken from an empty stream requires
that nothing was ever trimmed from it; a stream gone altogether is accepted only if the position
is older than a stream's lifetime (`gateway/bus/lua/history.lua`). The session expires
`RECOVERY_WINDOW` after its client went away; it is looked up under the token's user (another
user's pid is simply not found), never for a user kicked since it began
(`publisher.disconnect_user`), and a pid is 128 random bits.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.bus.contract import Backend, BusUnavailable, Span
from gateway.delivery.offsets import OffsetError, decode, key_of, position_of
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity, rooms_for
from publisher.envelope import EVERYONE, EnvelopeError, Position, parse_position
from publisher.session import SessionError, SessionRecord

log = logging.getLogger("gateway.delivery.recovery")

RECOVERED = "recovered"
MAX_PID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Restorable:
    """A session that may be restored: its sid, and where each room's replay starts."""

    pid: str
    sid: str
    spans: list[Span]  # (room, replay after, up to): its rooms, rooms left while away, EVERYONE
    offset: dict[str, Position]  # what the client's offset said, per room
    record: SessionRecord

    @property
    def rooms(self) -> list[str]:
        return [room for room, _, end in self.spans if end is None and room != EVERYONE]


def _later(a: Position | None, b: Position | None) -> Position | None:
    if a is None or b is None:
        return a if b is None else b
    return a if key_of(a.ms, a.seq) >= key_of(b.ms, b.seq) else b


def _position(text: str | None) -> Position | None:
    try:
        return parse_position(text) if text else None
    except EnvelopeError:
        return None


class Recovery:
    def __init__(self, backend: Backend, window_s: float) -> None:
        self.backend = backend
        self.window_ms = int(window_s * 1000)

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0

    @staticmethod
    def new_pid() -> str:
        return secrets.token_urlsafe(16)

    async def find(self, identity: Identity, pid: Any, offset: Any) -> tuple[Restorable | None, str]:
        """The session to restore for this CONNECT, or None and the reason (a metric label)."""
        if not isinstance(pid, str) or not pid or len(pid) > MAX_PID_LENGTH:
            return None, "bad_pid"
        try:
            stored = await self.backend.load_session(identity.user_id, pid)
        except BusUnavailable:
            return None, "bus_unavailable"
        except SessionError as exc:
            log.warning("recovery refused: stored session does not parse: %s", exc)
            return None, "bad_session"
        if stored is None:
            return None, "unknown_session"
        record, revoked = stored
        if record.user != identity.user_id:
            return None, "foreign_user"
        if revoked and revoked >= record.created_ms:
            return None, "revoked"
        if _now_ms() - record.alive_ms > self.window_ms:
            return None, "expired"
        known = [*record.rooms, *record.left, EVERYONE]
        try:
            given = {room: Position(ms, seq) for room, (ms, seq) in
                     decode(offset if offset is not None else "", known).items()}
        except OffsetError:
            return None, "bad_offset"
        spans: list[Span] = []
        for room in record.rooms:
            start = _later(given.get(room), _position(record.starts.get(room)))
            if start is None:
                return None, "no_start"  # the bus could not say where it entered: cannot be exact
            spans.append((room, start, None))
        for room, left_at in record.left.items():
            until = _position(left_at)
            start = _later(given.get(room), _position(record.starts.get(room)))
            if room in record.rooms or until is None or start is None:
                continue
            if key_of(start.ms, start.seq) < key_of(until.ms, until.seq):
                spans.append((room, start, until))
        everyone = _later(given.get(EVERYONE), _position(record.starts.get(EVERYONE)))
        if everyone is None:
            return None, "no_start"
        spans.append((EVERYONE, everyone, None))
        return Restorable(pid, record.sid, spans, given, record), RECOVERED

    def save(self, pid: str, sid: str, identity: Identity, rooms: list[str], starts: Mapping[str, Position],
             *, created_ms: int | None = None, left: Mapping[str, str] | None = None,
             extra: tuple[str, ...] = ()) -> None:
        """Write (or rewrite) the session record: queued, nobody waits for it."""
        now = _now_ms()
        self.backend.save_session(pid, SessionRecord(
            sid=sid,
            user=identity.user_id,
            rooms=tuple(rooms),
            starts={room: str(at) for room, at in starts.items()},
            created_ms=created_ms or now,
            alive_ms=now,
            left=dict(left or {}),
            extra=extra,
        ))

    def save_restored(self, restorable: Restorable, conn: Conn, identity: Identity,
                      starts_now: Mapping[str, Position] | None = None) -> None:
        """Rewrite a restored session from the socket as it is now: its creation and its rooms'
        starts stay (a client that drops again before receiving anything is replayed from the
        same place); a room entered meanwhile (a producer's join during the restore) starts
        where the socket entered it; rooms not from the token stay marked so."""
        record = restorable.record
        rooms = list(conn.rooms)
        starts = {room: at for room, text in record.starts.items() if (at := _position(text)) is not None}
        starts.update(starts_now or {})
        for room in (*rooms, EVERYONE):
            if room not in starts and (key := conn.positions.get(room)) is not None:
                starts[room] = position_of(key)
        token_rooms = set(rooms_for(identity))
        self.save(restorable.pid, conn.sid, identity, rooms, starts, created_ms=record.created_ms,
                  left={room: at for room, at in record.left.items() if room not in rooms},
                  extra=tuple(room for room in rooms if room not in token_rooms))

    def rooms_changed(self, pid: str, user: str, rooms: list[str], room: str, change: str,
                      at: Position | None) -> None:
        self.backend.session_rooms(pid, user, rooms, room, change, str(at) if at is not None else "")

    def ended(self, pid: str, user: str, *, may_return: bool) -> None:
        """The socket is gone. Its session is kept for the window only when the client may come
        back (its transport dropped); a client that left the namespace itself will not, and as
        Node's socket.io does, its session is forgotten at once."""
        if may_return:
            self.backend.end_session(pid, user, _now_ms())
        else:
            self.backend.drop_session(pid, user)


def _now_ms() -> int:
    return int(time.time() * 1000)
