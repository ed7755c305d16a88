"""The sockets of this replica, indexed for delivery: by sid, and by room.

A room's index maps sid to `Conn`, so delivering an event to a room is one dict lookup and
one loop, with nothing allocated per recipient. The index of a user's sockets is their
`user:<id>` room. One `Conn` per socket, with `__slots__`: it is the per-connection memory.

Delivery order and exactly-once: every bus message carries a position that grows across all
rooms (`backend.order_key`, see `recovery.py`). A socket remembers the last one it was given, so an
event reaching it through two of its rooms, or both from history and live, is written once;
while a socket is being attached (subscriptions confirming, history being read) its live
events wait in `pending` and are merged, in order, with what history returned.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from gateway.policy.rooms import Identity
from publisher.rooms import user_room

if TYPE_CHECKING:
    from gateway.delivery.ports import Counters, SocketWriter


@dataclass(slots=True)
class Outgoing:
    """One event as every local recipient gets it: built once per event per replica."""

    key: int  # backend.order_key(ms, seq)
    event: str
    text: bytes  # the Socket.IO packet, for polling sockets
    frame: bytes  # the same as one WebSocket frame
    t_ms: float  # publish time, for ws_latency_seconds
    replay: bool = False  # read from history (recovery, catch-up), not received live


class Conn:
    """One connected socket of this replica."""

    __slots__ = (
        "eio",
        "eio_sid",
        "expiry",
        "identity",
        "last_key",
        "pending",
        "pid",
        "refused",
        "rooms",
        "sid",
        "stamp",
        "tokens",
    )

    def __init__(self, sid: str, eio_sid: str, identity: Identity, eio: SocketWriter,
                 pid: str | None, last_key: int) -> None:
        self.sid = sid
        self.eio_sid = eio_sid
        self.identity = identity
        self.eio = eio
        self.pid = pid
        self.rooms: dict[str, None] = {}  # an ordered set: the ack lists rooms in join order
        self.last_key = last_key
        self.pending: list[Outgoing] | None = []  # attached when None
        self.tokens = 0.0  # rate limit bucket, see ratelimit.py
        self.stamp = 0.0
        self.refused = 0
        self.expiry = 0  # its entry in the registry's expiry heap (0: none)

    def deliver(self, out: Outgoing) -> bool:
        """Write `out` unless this socket already has it; True when written."""
        if out.key <= self.last_key:
            return False
        pending = self.pending
        if pending is not None:
            pending.append(out)
            return False
        self.last_key = out.key
        self.eio.push_message(out.text, out.frame)
        return True

    def attach(self, history: list[Outgoing], metrics: Counters | None = None) -> int:
        """End the attaching phase: history and what arrived meanwhile, merged in order.

        Every event written is counted as sent (and as replayed when it came from history).
        Returns how many events were written.
        """
        pending = self.pending or []
        self.pending = None
        merged = sorted(history + pending, key=_key) if pending else history
        written = 0
        for out in merged:
            if self.deliver(out):
                written += 1
                if metrics is not None:
                    metrics.sent(out.event, 1, out.t_ms)
                    if out.replay:
                        metrics.sent_replay(1)
        return written


def _key(out: Outgoing) -> int:
    return out.key


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
