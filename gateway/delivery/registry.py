"""The sockets of this replica, indexed for delivery: by sid, and by room.

A room's index maps sid to `Conn`, so delivering an event to a room is one dict lookup and
one loop, with nothing allocated per recipient. The index of a user's sockets is their
`user:<id>` room. One `Conn` per socket, with `__slots__`: it is the per-connection memory.

Delivery order and exactly-once: positions are per room (the entry of the event in its room's
stream, `offsets.key_of`). A socket remembers, per room, the last position it was given, so an
event reaching it both from history and live is written once, and within a room in order; while
a socket is held (its rooms being subscribed, history being read, the bus catching up) its live
events wait in `pending` and are merged with what history returned. Holds count: a socket is
released when the last of them ends, never by a hold it did not start.

Each event's last argument is the socket's offset: its positions in every room it received
something in (`offsets`). The part for the event's own room is built once per event; the rest
(`Conn.tail`) changes only when the socket receives in another room, and a fan-out shares the
frame among every recipient with the same tail.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gateway.delivery.frames import eio_message_frame
from gateway.policy.rooms import Identity
from publisher.envelope import Scope
from publisher.rooms import user_room

if TYPE_CHECKING:
    from collections.abc import Iterator

    from gateway.delivery.ports import Counters, SocketWriter

_CLOSE = b'"]'


@dataclass(slots=True)
class Outgoing:
    """One event as every local recipient gets it: built once per event per replica."""

    room: str  # its stream: a room, or EVERYONE
    key: int  # its place in that stream (offsets.key_of)
    event: str
    head: bytes  # the Socket.IO packet up to its offset; the whole packet when `own` is empty
    own: bytes  # this room's offset component (empty: recovery is off, no offset is sent)
    t_ms: float  # publish time, for ws_latency_seconds
    replay: bool = False  # read from history (recovery, catch-up), not received live
    scope: Scope | None = None  # an event for several rooms or with except rooms: who gets this copy
    _frames: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)

    def packet(self, tail: bytes) -> tuple[bytes, bytes]:
        """(text for polling, WebSocket frame) of this event for a socket whose offset has
        `tail` after this room's component; built once per distinct tail."""
        built = self._frames.get(tail)
        if built is None:
            text = self.head + self.own + tail + _CLOSE if self.own else self.head
            built = self._frames[tail] = (text, eio_message_frame(text))
        return built


def _by_key(out: Outgoing) -> int:
    """Within a room, stream order; across rooms, publish time as the rooms' shards tell it (a
    single Redis has one clock: publish order but for messages of the same millisecond)."""
    return out.key


class Conn:
    """One connected socket of this replica."""

    __slots__ = (
        "components",
        "eio",
        "eio_sid",
        "expiry",
        "holds",
        "identity",
        "pending",
        "pid",
        "positions",
        "refused",
        "rooms",
        "sid",
        "stamp",
        "tails",
        "tokens",
    )

    def __init__(self, sid: str, eio_sid: str, identity: Identity, eio: SocketWriter, pid: str | None) -> None:
        self.sid = sid
        self.eio_sid = eio_sid
        self.identity = identity
        self.eio = eio
        self.pid = pid
        self.rooms: dict[str, None] = {}  # an ordered set: the ack lists rooms in join order
        self.positions: dict[str, int] = {}  # room -> key of the last entry it was given
        self.components: dict[str, bytes] = {}  # room -> its offset component, once it received there
        self.tails: dict[str, bytes] = {}  # room -> the offset's other components (a cache)
        self.pending: list[Outgoing] | None = []  # held until `release`; a new socket is held
        self.holds = 1  # its CONNECT: released when the reply is written
        self.tokens = 0.0  # rate limit bucket, see ratelimit.py
        self.stamp = 0.0
        self.refused = 0
        self.expiry = 0  # its entry in the registry's expiry heap (0: none)

    def deliver(self, out: Outgoing) -> bool:
        """Write `out` unless this socket already has it; True when written."""
        if out.key <= self.positions.get(out.room, -1):
            return False
        pending = self.pending
        if pending is not None:
            pending.append(out)
            return False
        room = out.room
        self.positions[room] = out.key
        # Decided when written, with the rooms the socket is in then (also after a hold): a copy
        # of an event sent to several rooms, or except some, that is not this socket's is skipped.
        if out.scope is not None and not out.scope.admits(room, self.rooms):
            return False
        tail = b""
        if out.own:
            components = self.components
            components[room] = out.own
            tails = self.tails
            if len(components) > 1:
                cached = tails.get(room)
                tail = cached if cached is not None else b"".join(
                    [b"," + part for other, part in components.items() if other != room])
                tails.clear()  # every other room's tail held this room's old component
                tails[room] = tail
        text, frame = out.packet(tail)
        self.eio.push_message(text, frame)
        return True

    def hold(self) -> None:
        """Hold live events until the matching `release` (subscriptions, history, catch-up)."""
        self.holds += 1
        if self.pending is None:
            self.pending = []

    def release(self, history: list[Outgoing], metrics: Counters | None = None) -> int:
        """End one hold, adding what history brought; when it was the last, write everything
        held, merged in order within each room (across rooms, by publish time), once each.
        Returns how many were written."""
        if self.pending is None:  # not held: deliver at once
            self.pending = []
            self.holds = 1
        self.pending.extend(history)
        self.holds -= 1
        if self.holds > 0:
            return 0
        self.holds = 0
        held, self.pending = self.pending, None
        written = 0
        for out in sorted(held, key=_by_key):
            if self.deliver(out):
                written += 1
                if metrics is not None:
                    metrics.sent(out.event, 1, out.t_ms)
                    if out.replay:
                        metrics.sent_replay(1)
        return written


class Removed(NamedTuple):
    """What forgetting a socket changed: rooms left with no local socket (unsubscribe them),
    and whether it was its user's last socket here (the user is now offline on this replica)."""

    conn: Conn
    emptied: list[str]
    user_offline: bool


class Registry:
    """Every `Conn` of this replica, by sid and by room, and their token expiries.

    Presence is decided here, once: a user is online on this replica while their `user:<id>`
    room has a local socket (`add` says when the first arrives, `remove` when the last goes).
    """

    def __init__(self) -> None:
        self.by_sid: dict[str, Conn] = {}
        self.rooms: dict[str, dict[str, Conn]] = {}
        # room -> key of the newest entry this replica knows in it: read when its channel is
        # subscribed, then moved by every message received on it. A socket entering a room
        # starts there (`attach`), and a catch-up replays from there.
        self.cursor: dict[str, int] = {}
        # (expires at, entry id, sid): no reference to the Conn, so a closed socket is not kept
        # alive until its token's exp. `Conn.expiry` names the entry that is still its own.
        self._expiries: list[tuple[float, int, str]] = []
        self._entries = itertools.count(1)

    def __len__(self) -> int:
        return len(self.by_sid)

    def get(self, sid: str) -> Conn | None:
        return self.by_sid.get(sid)

    def add(self, conn: Conn, expires_at: float | None) -> bool:
        """Register `conn` (its rooms are joined next); True when it is its user's first socket
        here, so the user comes online on this replica."""
        first = user_room(conn.identity.user_id) not in self.rooms
        self.by_sid[conn.sid] = conn
        if expires_at is not None:
            conn.expiry = next(self._entries)
            heapq.heappush(self._expiries, (expires_at, conn.expiry, conn.sid))
            if len(self._expiries) > 2 * len(self.by_sid) + 1024:
                self._compact()
        return first

    def remove(self, sid: str) -> Removed | None:
        """Forget a socket: the rooms that now have no local socket, and whether its user went
        offline here."""
        conn = self.by_sid.pop(sid, None)
        if conn is None:
            return None
        emptied: list[str] = []
        for room in conn.rooms:
            members = self.rooms.get(room)
            if members is not None:
                members.pop(sid, None)
                if not members:
                    del self.rooms[room]
                    emptied.append(room)
        conn.rooms.clear()
        conn.expiry = 0
        own = user_room(conn.identity.user_id)
        return Removed(conn, emptied, own not in self.rooms)

    def join(self, conn: Conn, room: str) -> bool:
        """Put `conn` in `room`; True when the room had no local socket before."""
        conn.rooms[room] = None
        members = self.rooms.get(room)
        if members is None:
            self.rooms[room] = {conn.sid: conn}
            return True
        members[conn.sid] = conn
        return False

    def leave(self, conn: Conn, room: str) -> bool:
        """Take `conn` out of `room`; True when the room has no local socket left."""
        conn.rooms.pop(room, None)
        members = self.rooms.get(room)
        if members is None:
            return False
        members.pop(conn.sid, None)
        if not members:
            del self.rooms[room]
            return True
        return False

    def members(self, room: str) -> Iterator[Conn]:
        members = self.rooms.get(room)
        if members:
            yield from list(members.values())

    def user_sockets(self, user_id: str) -> int:
        """How many sockets of this user this replica holds."""
        members = self.rooms.get(user_room(user_id))
        return len(members) if members else 0

    def online_users(self) -> list[str]:
        prefix = len("user:")
        return [room[prefix:] for room in self.rooms if room.startswith("user:")]

    def expired(self, now: float) -> list[Conn]:
        """Sockets whose token expired by `now` and are still connected.

        A recovered session reuses its sid: an entry counts only while it is still the expiry
        of the `Conn` registered under that sid, never the one of a connection it replaced.
        """
        out = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, entry, sid = heapq.heappop(heap)
            conn = self.by_sid.get(sid)
            if conn is not None and conn.expiry == entry:
                out.append(conn)
        return out

    def _compact(self) -> None:
        """Drop the entries of sockets that are gone: churn must not grow the heap for as long
        as tokens live."""
        live = [(at, entry, sid) for at, entry, sid in self._expiries
                if (conn := self.by_sid.get(sid)) is not None and conn.expiry == entry]
        heapq.heapify(live)
        self._expiries = live
