"""Fakes for in-process tests of `gateway.delivery`: a replica's delivery core with no process,
no socket and no Redis, driven one event-loop turn at a time.

- `FakeSocket` (a `ports.SocketWriter`) and `FakeSocketLayer` (a `ports.SocketLayer`) record
  what the core writes and asks.
- `FakeBus` is a `bus.contract.Backend` whose positions, history, epochs and availability the
  test sets. `MemoryBackend` is the real in-process bus and the tests use it where they can; the
  fake exists for what it cannot show: its clock is fixed (`ms` does not move, so a new epoch
  really gives *smaller* positions and only the dedup reset lets them through), it delivers a
  message only on channels subscribed when it is published (as Redis pub/sub does, so an event
  reaches a replica that just joined a room only through history), its `subscribe` and `history`
  can be held open (the attach window), it can stop delivering (the pub/sub connection lost) or
  answering (`BusUnavailable`), trim a room's history (a hole), lose its data (a new epoch),
  revoke a user, and it records `set_online`.
- `Replica` builds a `DeliveryCore` on a bus, started as the subscriber does at its first
  connection (`on_bus_up`, then `on_bus_resubscribed`), and connects sockets as
  `ConnectSequence` does, or through a real `ConnectSequence` (`handshake`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.bus.contract import EVERYONE, Backend, BusSink, BusUnavailable, Position, Span
from gateway.delivery.connect import Accepted, ConnectSequence, Refused
from gateway.delivery.core import DeliveryCore
from gateway.delivery.recovery import Recovery
from gateway.delivery.registry import Conn
from gateway.policy.auth import TOKEN_INVALID, AuthError
from gateway.policy.rooms import Identity, rooms_for
from publisher.envelope import NAMESPACE, encode_control, encode_event
from publisher.rooms import user_room
from publisher.session import SessionRecord

PACKET_PREFIX = b"2" + NAMESPACE.encode() + b","
EVENT = "notification:new"


# -- the Socket.IO side ------------------------------------------------------------------------


class FakeSocket:
    """One client's transport: every packet written, decoded for assertions."""

    def __init__(self, *, websocket: bool = True) -> None:
        self.packets: list[bytes] = []
        self.frames: list[bytes] = []
        self.closed = False
        self.is_websocket = websocket
        self.transport_closed = False

    def push_message(self, text: bytes, frame: bytes) -> None:
        self.packets.append(text)
        self.frames.append(frame)

    def close_transport(self, *, flush: bool = False) -> None:
        self.transport_closed = True
        self.closed = True

    @property
    def events(self) -> list[list[Any]]:
        """Each packet as its Socket.IO arguments: [event, data] or [event, data, offset]."""
        out = []
        for packet in self.packets:
            assert packet.startswith(PACKET_PREFIX), packet
            out.append(orjson.loads(packet[len(PACKET_PREFIX):]))
        return out

    @property
    def data(self) -> list[Any]:
        """The payloads received, in order: what a test compares."""
        return [args[1] for args in self.events]

    @property
    def last_offset(self) -> str:
        """The offset socket.io-client would send back on reconnection."""
        return str(self.events[-1][-1])


class FakeSocketLayer:
    """The Socket.IO server as the core calls back into it."""

    def __init__(self) -> None:
        self.kicks: list[tuple[str, str]] = []
        self.depth = 0
        self.batches = 0

    async def kick(self, conn: Conn, reason: str) -> None:
        self.kicks.append((conn.sid, reason))

    def begin_batch(self) -> None:
        self.depth += 1

    def end_batch(self) -> None:
        self.depth -= 1
        self.batches += 1


class FakeCounters:
    """`ports.Counters` and `connect.HandshakeCounters`, recording every call."""

    def __init__(self) -> None:
        self.sent_by_event: Counter[str] = Counter()
        self.replayed = 0
        self.errors: list[str] = []
        self.received: Counter[str] = Counter()
        self.bus_events: list[str] = []
        self.handshakes: list[str] = []
        self.recoveries: list[str] = []

    def sent(self, event: str, n: int, t_ms: float) -> None:
        self.sent_by_event[event] += n

    def sent_replay(self, n: int) -> None:
        self.replayed += n

    def error(self, kind: str) -> None:
        self.errors.append(kind)

    def bus_received(self, kind: str) -> None:
        self.received[kind] += 1

    def bus_event(self, name: str) -> None:
        self.bus_events.append(name)

    def handshake(self, outcome: str) -> None:
        self.handshakes.append(outcome)

    def recovery(self, outcome: str) -> None:
        self.recoveries.append(outcome)


# -- the bus -------------------------------------------------------------------------------------


class FakeBus:
    """A `Backend` with the contract's promises and a test's hands on every dial (module doc)."""

    name = "fake"

    def __init__(self, *, epoch: str = "e1", ms: int = 1_000) -> None:
        self.epoch = epoch
        self.ms = ms
        self.seq = 0
        self.history_of: dict[str, list[tuple[Position, bytes]]] = {}
        self.trimmed: dict[str, Position] = {}
        self.channels: set[str] = set()  # rooms whose channel is confirmed; everyone's always is
        self.unsubscribed: list[str] = []
        self.listening = True  # the pub/sub connection is up: published messages reach the sink
        self.available = True  # commands answer; False: BusUnavailable
        self.history_available = True  # False: history reads alone raise BusUnavailable
        self.subscribe_gate: asyncio.Event | None = None  # set: SUBSCRIBE confirmations wait for it
        self.history_gate: asyncio.Event | None = None  # set: history reads wait for it
        self.history_gates: deque[asyncio.Event] = deque()  # the next reads wait, each for its own
        self.history_reads: list[list[Span]] = []
        self.sessions: dict[str, SessionRecord] = {}
        self.revoked: dict[str, int] = {}  # user -> ms of the revocation (a kick)
        self.online: list[tuple[str, bool]] = []
        self.last_message = b""  # the last message published, as subscribers receive it
        self._sink: BusSink | None = None

    # -- what a test does to it

    def emit(self, room: str | None, data: Any, event: str = EVENT) -> Position:
        """A producer publishes an event (to everyone when `room` is None)."""
        envelope = encode_event(event, data, room, time.time() * 1000)
        target = room if room is not None else EVERYONE
        return self._publish(envelope, target, keep=True)

    def control(self, kind: str, user: str, rooms: Sequence[str] | None = None) -> Position:
        """A producer's join / leave / kick: on the channel of `user:<u>`, with no history."""
        envelope = encode_control(kind, user, list(rooms) if rooms is not None else None, time.time() * 1000)
        return self._publish(envelope, user_room(user), keep=False)

    def trim(self, room: str, n: int) -> None:
        """Drop the `n` oldest entries of a room's history, as MAXLEN/MINID trimming does."""
        entries = self.history_of.get(room, [])
        dropped, self.history_of[room] = entries[:n], entries[n:]
        if dropped:
            self.trimmed[room] = dropped[-1][0]

    def lose_data(self, epoch: str) -> None:
        """Redis restarted empty: a new epoch, positions from 1 again, no history, no session."""
        self.epoch = epoch
        self.seq = 0
        self.history_of.clear()
        self.trimmed.clear()
        self.sessions.clear()

    def _publish(self, envelope: bytes, channel: str, *, keep: bool) -> Position:
        self.seq += 1
        pos = Position(self.epoch, self.ms, self.seq)
        message = envelope[:-1] + b',"o":"' + pos.offset.encode() + b'"}'
        self.last_message = message
        if keep:
            self.history_of.setdefault(channel, []).append((pos, message))
        sink = self._sink
        if sink is not None and self.listening and (channel == EVERYONE or channel in self.channels):
            asyncio.get_running_loop().call_soon(sink.on_message, message)  # as a subscriber reads it
        return pos

    # -- the Backend

    @property
    def connected(self) -> bool:
        return self.listening

    async def start(self, sink: BusSink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    async def subscribe(self, room: str) -> bool:
        if self.subscribe_gate is not None:
            await self.subscribe_gate.wait()
        self.channels.add(room)
        return True

    def unsubscribe(self, room: str) -> None:
        self.channels.discard(room)
        self.unsubscribed.append(room)

    async def publish_event(self, event: str, data: Any, room: str | None) -> str:
        if not self.available:
            raise BusUnavailable("fake bus down")
        return self.emit(room, data, event).offset

    async def position(self) -> Position:
        if not self.available:
            raise BusUnavailable("fake bus down")
        return Position(self.epoch, self.ms, self.seq)

    async def history(self, spans: Sequence[Span]) -> list[bytes] | None:
        self.history_reads.append(list(spans))
        gate = self.history_gates.popleft() if self.history_gates else self.history_gate
        if gate is not None:
            await gate.wait()
        if not (self.available and self.history_available):
            raise BusUnavailable("fake bus down")
        out: list[tuple[int, bytes]] = []
        for room, after, until in spans:
            if after.epoch != self.epoch:
                return None
            trimmed = self.trimmed.get(room)
            if trimmed is not None and trimmed.key > after.key:
                return None
            out.extend((pos.key, message) for pos, message in self.history_of.get(room, ())
                       if pos.key > after.key and (until is None or pos.key <= until.key))
        out.sort(key=lambda item: item[0])
        return [message for _, message in out]

    def save_session(self, pid: str, record: SessionRecord) -> None:
        left = self.sessions[pid].left if pid in self.sessions else {}
        self.sessions[pid] = dataclasses.replace(record, left=left)

    async def load_session(self, pid: str) -> tuple[SessionRecord, int] | None:
        if not self.available:
            raise BusUnavailable("fake bus down")
        record = self.sessions.get(pid)
        if record is None:
            return None
        return record, self.revoked.get(record.user, 0)

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        record = self.sessions.get(pid)
        if record is not None:
            self.sessions[pid] = dataclasses.replace(record, alive_ms=t_ms)

    def drop_session(self, pid: str, user: str) -> None:
        self.sessions.pop(pid, None)

    def session_rooms(self, pid: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        record = self.sessions.get(pid)
        if record is None:
            return
        joined, left = dict(record.joined), dict(record.left)
        if change == "j":
            left.pop(room, None)
            joined[room] = at or "0-0"
        else:
            joined.pop(room, None)
            if at:
                left[room] = at
        self.sessions[pid] = dataclasses.replace(record, rooms=tuple(rooms), joined=joined, left=left)

    def set_online(self, user: str, online: bool) -> None:
        self.online.append((user, online))


# -- a replica -----------------------------------------------------------------------------------


class FakeAuth:
    """`policy.auth.Authenticator` as the connect sequence uses it: a token names an identity."""

    leeway = 0.0

    def __init__(self) -> None:
        self.identities: dict[str, Identity] = {}

    def token(self, identity: Identity) -> str:
        token = f"token-{len(self.identities)}"
        self.identities[token] = identity
        return token

    def authenticate(self, token: str) -> Identity:
        identity = self.identities.get(token)
        if identity is None:
            raise AuthError(TOKEN_INVALID, "unknown test token")
        return identity


class AdmitAll:
    """`connect.UserLimit` with no cap."""

    def user_may_connect(self, user_id: str, current: int) -> bool:
        return True

    def connect_done(self, user_id: str) -> None:
        return None


@dataclass
class SidBook:
    """`connect.SidBook`: python-socketio's bookkeeping of sids, recorded."""

    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def enter(self, sid: str, eio_sid: str) -> None:
        self.entered.append(sid)

    def leave(self, sid: str) -> None:
        self.left.append(sid)


class Replica:
    """One gateway replica's delivery, wired as `sio.server.GatewayServer` wires it."""

    def __init__(self, bus: Backend, *, window_s: float = 60.0) -> None:
        self.bus = bus
        self.counters = FakeCounters()
        self.sockets = FakeSocketLayer()
        self.recovery = Recovery(bus, window_s)
        self.room_changes: list[tuple[str, str, str, Position | None]] = []
        self.core = DeliveryCore(bus, self.counters, self.sockets, recovery=self.recovery.enabled,
                                 rooms_changed=self._rooms_changed)
        self.auth = FakeAuth()
        self.book = SidBook()
        self._sids = itertools.count(1)
        self.connects = ConnectSequence(self.core, self.auth, AdmitAll(), self.recovery,  # type: ignore[arg-type]
                                        self.counters, self.book, new_sid=self._new_sid)

    def _new_sid(self) -> str:
        return f"sid{next(self._sids)}"

    def _rooms_changed(self, conn: Conn, room: str, change: str, at: Position | None) -> None:
        """As the server's: the session record follows a connected socket's rooms."""
        self.room_changes.append((conn.sid, room, change, at))
        if conn.pid is not None:
            self.recovery.rooms_changed(conn.pid, list(conn.rooms), room, change, at)

    async def start(self) -> Replica:
        """As the bus's subscriber does at its first connection."""
        await self.bus.start(self.core)
        await self.core.on_bus_up()
        await self.core.on_bus_resubscribed()
        return self

    async def connect(self, user: str = "1", *, role: str = "student", classrooms: tuple[str, ...] = (),
                      ) -> tuple[Conn, FakeSocket]:
        """A fresh socket, as `ConnectSequence._fresh` makes one (no session): registered, its
        token's rooms attached, then its CONNECT reply written."""
        identity = Identity(user, role, classrooms)
        sock = FakeSocket()
        sid = self._new_sid()
        conn = Conn(sid, "e" + sid, identity, sock, None, 0)
        self.core.register(conn, None)
        await self.core.attach_rooms(conn, rooms_for(identity))
        self.core.accepted(conn)
        return conn, sock

    async def handshake(self, identity: Identity, *, pid: str | None = None, offset: str | None = None,
                        ) -> tuple[Accepted | Refused | None, FakeSocket]:
        """A CONNECT through the real `ConnectSequence`; an accepted socket gets its reply
        written (`DeliveryCore.accepted`), as the Socket.IO layer does next."""
        auth: dict[str, Any] = {"token": self.auth.token(identity)}
        if pid is not None:
            auth["pid"] = pid
        if offset is not None:
            auth["offset"] = offset
        sock = FakeSocket()
        outcome = await self.connects.run(f"eio{len(self.book.entered)}", sock, auth, {})
        if isinstance(outcome, Accepted):
            self.core.accepted(outcome.conn)
        return outcome, sock

    def transport_lost(self, conn: Conn) -> None:
        """The client's transport dropped (it may come back): as the server's `_socket_gone`."""
        conn.eio.close_transport()
        gone = self.core.forget(conn.sid)
        if gone is not None and gone.pid is not None:
            self.recovery.ended(gone.pid, gone.identity.user_id, may_return=True)


async def turns(n: int = 5) -> None:
    """Let the loop run `n` turns: messages the bus scheduled are delivered, spawned tasks run."""
    for _ in range(n):
        await asyncio.sleep(0)
