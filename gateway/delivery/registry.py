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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.policy.rooms import Identity

if TYPE_CHECKING:
    from gateway.sio.socket import FastSocket


class Sent(Protocol):
    """The two counters a write from `attach` moves (gateway.metrics.Metrics)."""

    def sent(self, event: str, n: int, t_ms: float) -> None: ...

    def sent_replay(self, n: int) -> None: ...


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

    def __init__(self, sid: str, eio_sid: str, identity: Identity, eio: FastSocket,
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

    def attach(self, history: list[Outgoing], metrics: Sent | None = None) -> int:
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


class Registry:
    """Every `Conn` of this replica, by sid and by room, and their token expiries."""

    def __init__(self) -> None:
        self.by_sid: dict[str, Conn] = {}
        self.rooms: dict[str, dict[str, Conn]] = {}
        self._expiries: list[tuple[float, int, Conn]] = []
        self._pushes = 0

    def __len__(self) -> int:
        return len(self.by_sid)

    def get(self, sid: str) -> Conn | None:
        return self.by_sid.get(sid)

    def add(self, conn: Conn, expires_at: float | None) -> None:
        self.by_sid[conn.sid] = conn
        if expires_at is not None:
            self._pushes += 1
            heapq.heappush(self._expiries, (expires_at, self._pushes, conn))

    def remove(self, sid: str) -> tuple[Conn | None, list[str]]:
        """Forget a socket; returns it and the rooms that now have no local socket."""
        conn = self.by_sid.pop(sid, None)
        emptied: list[str] = []
        if conn is None:
            return None, emptied
        for room in conn.rooms:
            members = self.rooms.get(room)
            if members is not None:
                members.pop(sid, None)
                if not members:
                    del self.rooms[room]
                    emptied.append(room)
        conn.rooms.clear()
        return conn, emptied

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

    def user_count(self, user_room: str) -> int:
        members = self.rooms.get(user_room)
        return len(members) if members else 0

    def expired(self, now: float) -> list[Conn]:
        """Sockets whose token expired by `now` and are still connected.

        Entries hold the `Conn` itself: a recovered session reuses its sid, and must not
        inherit the expiry of the connection it replaced.
        """
        out = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, _, conn = heapq.heappop(heap)
            if self.by_sid.get(conn.sid) is conn:
                out.append(conn)
        return out
