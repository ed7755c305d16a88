"""Connection state recovery, as socket.io-client >= 4.6 asks for it, on any replica.

The protocol. The CONNECT reply carries a private session id `pid`; every event carries its
offset as a last string argument; a client that lost its transport reconnects with
`{pid, offset}` in its CONNECT auth. We answer with the same sid and pid (the client then sets
`socket.recovered`), the same rooms, and every event of those rooms after `offset`, in order,
once each, before any newer event. Or, when that cannot be done in full, with a new sid and
pid: `recovered === false`, never a silent gap.

One offset for several rooms. A socket is in several rooms (`user:42`, `classroom:7`, ...), and
socket.io-client keeps one offset: the last argument of the last event it processed. So
offsets must be comparable across rooms. Each room's history is its own stream (recovery
reads only the rooms of the session, and a busy classroom does not push a quiet user's events
out), but every message on the bus, whatever its room, is numbered by one counter in the same
Lua script that appends it to history and publishes it (`publisher/lua/publish.lua`). The
offset is `<epoch>:<ms>-<seq>` and the history entry's id is `<ms>-<seq>`, with `ms` never
decreasing as `seq` grows, so ordering by stream id is ordering by `seq` in every room. (The
gateway orders by the pair, `backend.order_key`: if Redis loses its last writes but keeps the
clock, `seq` values come again, later in `ms`.)

Why "after the offset" is exactly what the client missed: a replica reads the bus on one
connection, and Redis delivers a subscriber's messages in the order it ran the PUBLISHes, that
is in `seq` order; a socket is written its events in that order (and `Conn` drops any `seq` it
already passed). So a client that processed the event at `seq = n` has every event of its rooms
up to `n` and none after: the replay is the events of its rooms with `seq > n`, merged by `seq`.
A client that received nothing has no offset; it is replayed from the position its session
started at, taken after its subscriptions were confirmed (so nothing between is missed either).

When not to recover. The epoch is a random id kept with the counter: Redis restarted empty or
was flushed means a new epoch, and an offset of another epoch is refused (positions restarted,
history is gone). A room's history is trimmed by count and age; if an entry after the offset
was trimmed, the replay would be short: refused. Trimming leaves no trace in a stream, so
each history entry names its predecessor: the first entry after the offset must follow on
from a position at or before it (`lua/history.lua`). A room joined while the client was away
replays from the join, not from the offset (the session keeps join positions, field `j`).
The session (`<prefix>:s:<pid>`) expires `RECOVERY_WINDOW` after its client went away; it is
only recovered for the user it belongs to (the token is verified again, as on any
CONNECT: an expired token is refused before recovery is considered), never for a user kicked
since it began (`publisher.disconnect_user`), and a pid is 128 random bits.

Cost, per event: one HINCRBY/HGET/HSET on the clock, one XADD (+ approximate trim) and PEXPIRE
per room, one PUBLISH, all in one EVALSHA. Per session: one hash of six short fields and a set
member, refreshed by the replica's heartbeat. Measured in `bench/` (docs/performance.md).

Broadcasts (`broadcast_to_all`) have a history of their own (`<prefix>:hb`), replayed to every
recovering session like one more room, as Node's in-memory adapter does.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.bus.contract import EVERYONE, Backend, BusUnavailable, Position, Span
from gateway.policy.rooms import Identity
from publisher.envelope import EnvelopeError, parse_offset
from publisher.session import SessionError, SessionRecord

log = logging.getLogger("gateway.delivery.recovery")

RECOVERED = "recovered"
MAX_PID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Restorable:
    """A session that may be restored: its sid, and where each room's replay starts."""

    pid: str
    sid: str
    spans: list[Span]  # (room, replay after, up to): rooms in join order, then rooms left while away
    since: Position  # the client's offset (or the session's start)
    created_ms: int
    joined: frozenset[str] = frozenset()  # rooms joined after it began (a producer, the API), not the token's

    @property
    def rooms(self) -> list[str]:
        return [room for room, _, end in self.spans if end is None and room != EVERYONE]


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
            stored = await self.backend.load_session(pid)
        except BusUnavailable:
            return None, "bus_unavailable"
        except SessionError as exc:
            log.warning("recovery refused: stored session does not parse: %s", exc)
            return None, "bad_session"
        if stored is None:
            return None, "unknown_session"
        record, revoked = stored
        if record.user != identity.user_id:
            log.warning("recovery refused: session of another user", extra={"user_id": identity.user_id})
            return None, "foreign_user"
        if revoked and revoked >= record.created_ms:
            return None, "revoked"
        if _now_ms() - record.alive_ms > self.window_ms:
            return None, "expired"
        raw_offset = offset if isinstance(offset, str) and offset else record.start
        try:
            parsed = parse_offset(raw_offset)
        except EnvelopeError:
            return None, "bad_offset"
        since = Position(parsed.epoch, parsed.ms, parsed.seq)
        spans = _spans(list(record.rooms), since, record.joined, record.left)
        return Restorable(pid, record.sid, spans, since, record.created_ms, frozenset(record.joined)), RECOVERED

    def save(self, pid: str, sid: str, identity: Identity, rooms: list[str],
             start: Position | None, created_ms: int | None = None, start_offset: str | None = None,
             joined: Mapping[str, str] | None = None) -> None:
        """Write (or rewrite) the session record: queued, nobody waits for it."""
        now = _now_ms()
        self.backend.save_session(pid, SessionRecord(
            sid=sid,
            user=identity.user_id,
            rooms=tuple(rooms),
            start=start_offset if start_offset is not None else (start.offset if start else ""),
            created_ms=created_ms or now,
            alive_ms=now,
            joined=joined or {},
        ))

    def save_restored(self, restorable: Restorable, sid: str, identity: Identity, rooms: list[str],
                      joined_now: Mapping[str, str] | None = None) -> None:
        """Rewrite a restored session: its creation time and start stay, and so do the rooms
        joined after it began, with their join positions (a room joined while away is still
        replayed from its join if the client drops again before receiving anything, and it
        stays marked as not the token's)."""
        since = restorable.since
        joined = {room: start.stream_id for room, start, end in restorable.spans
                  if end is None and room in restorable.joined and room in rooms}
        joined.update(joined_now or {})
        self.save(restorable.pid, sid, identity, rooms, None, created_ms=restorable.created_ms,
                  start_offset=since.offset, joined=joined)

    def rooms_changed(self, pid: str, rooms: list[str], room: str, change: str, at: Position | None) -> None:
        self.backend.session_rooms(pid, rooms, room, change, at.stream_id if at else "")

    def ended(self, pid: str, user: str, *, may_return: bool) -> None:
        """The socket is gone. Its session is kept for the window only when the client may come
        back (its transport dropped); a client that left the namespace itself will not, and as
        Node's socket.io does, its session is forgotten at once."""
        if may_return:
            self.backend.end_session(pid, user, _now_ms())
        else:
            self.backend.drop_session(pid, user)


def _positions(table: Mapping[str, str], epoch: str) -> dict[str, Position]:
    out = {}
    for room, at in table.items():
        ms_text, _, seq_text = at.partition("-")
        if ms_text.isdigit() and seq_text.isdigit():
            out[room] = Position(epoch, int(ms_text), int(seq_text))
    return out


def _spans(rooms: list[str], since: Position, joined_at: Mapping[str, str], left_at: Mapping[str, str]) -> list[Span]:
    """Each room replays from the client's offset, or from when it was joined if that is
    later: a room joined while the client was away brings only what came after the join. A
    room left while away replays from the offset up to the leave, and is not rejoined."""
    joined = _positions(joined_at, since.epoch)
    spans: list[Span] = []
    for room in rooms:
        at = joined.get(room)
        spans.append((room, at if at is not None and at.key > since.key else since, None))
    for room, until in _positions(left_at, since.epoch).items():
        if until.key > since.key and room not in rooms:
            at = joined.get(room)
            spans.append((room, at if at is not None and at.key > since.key else since, until))
    spans.append((EVERYONE, since, None))  # and what was sent to everyone meanwhile
    return spans


def _now_ms() -> int:
    return int(time.time() * 1000)
