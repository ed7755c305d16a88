"""Fakes for in-process tests of `gateway.delivery`: a replica's delivery core with no process,
no socket and no Redis, driven one event-loop turn at a time.

- `FakeSocket` (a `ports.SocketWriter`) and `FakeSocketLayer` (a `ports.SocketLayer`) record
  what the core writes and asks.
- `FakeBus` is a `bus.contract.Backend` keeping one stream per room with Redis's position rules
  (`gateway/bus/lua/history.lua`), whose clock, channels and availability the test sets.
  `MemoryBackend` is the real in-process bus and the tests use it where they can; the fake
  exists for what it cannot show: its clock moves only when the test says (`tick`), so several
  entries share a millisecond and their `seq` orders them; it delivers a message only on
  channels subscribed when it is published (as Redis pub/sub does, so an event reaches a replica
  that just joined a room only through history); its `subscribe` and `history` can be held open
  (the attach window); a room's channel can go down (`down`: its messages are not delivered, as
  when the connection to the room's shard is lost) while the others go on; it can stop
  answering (`BusUnavailable`), trim a room's stream (`trim`), lose a room's newest writes (a
  failover whose replica had not received them: `lose_writes`) or the whole stream (a flush:
  `lose_stream`), let a stream expire after a quiet spell (`expire`), revoke a user, and it
  records `set_online`. Sessions are kept by (user, pid), as Redis keys them.
- `Replica` builds a `DeliveryCore` on a bus, as `sio.server.GatewayServer` wires it, and
  connects sockets as `ConnectSequence` does, or through a real `ConnectSequence` (`handshake`).
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

from gateway.bus.contract import Backend, BusSink, BusUnavailable, Entries, Span
from gateway.delivery.connect import Accepted, ConnectSequence, Refused
from gateway.delivery.core import DeliveryCore
from gateway.delivery.offsets import EMPTY_SEQ
from gateway.delivery.recovery import Recovery
from gateway.delivery.registry import Conn
from gateway.policy.auth import TOKEN_INVALID, AuthError
from gateway.policy.rooms import Identity, rooms_for
from publisher.envelope import (
    EVERYONE,
    NAMESPACE,
    Position,
    encode_control,
    encode_event,
    encode_room_control,
    encode_scope,
)
from publisher.rooms import user_room
from publisher.session import SessionRecord

PACKET_PREFIX = b"2" + NAMESPACE.encode() + b","
EVENT = "notification:new"


def with_position(envelope: bytes, at: Position) -> bytes:
    """An envelope as subscribers receive it: with its position `o`, as publish.lua adds it."""
    return envelope[:-1] + b',"o":"' + str(at).encode() + b'"}'


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


@dataclass
class FakeStream:
    """A room's history stream: its entries, and `entries-added` (XINFO STREAM)."""

    entries: list[tuple[Position, bytes]] = field(default_factory=list)
    added: int = 0
    last: Position = field(default_factory=lambda: Position(0, 0))  # the last ID generated: XADD * never goes below it


class FakeBus:
    """A `Backend` with the contract's promises and a test's hands on every dial (module doc)."""

    name = "fake"

    def __init__(self, *, ms: int = 1_000, lifetime_ms: int = 120_000) -> None:
        self.ms = ms  # the clock of its shards: moves only by `tick`
        self.lifetime_ms = lifetime_ms  # a stream's lifetime after its last write (2 x the window)
        self.streams: dict[str, FakeStream] = {}
        self.channels: set[str] = {EVERYONE}  # rooms whose channel is confirmed; everyone's always is
        self.down: set[str] = set()  # rooms whose channel is lost: their messages do not arrive
        self.unsubscribed: list[str] = []
        self.available = True  # commands answer; False: BusUnavailable
        self.history_available = True  # False: history reads alone raise BusUnavailable
        self.subscribe_gate: asyncio.Event | None = None  # set: SUBSCRIBE confirmations wait for it
        self.history_gate: asyncio.Event | None = None  # set: history reads wait for it
        self.history_gates: deque[asyncio.Event] = deque()  # the next reads wait, each for its own
        self.history_reads: list[list[Span]] = []
        self.sessions: dict[tuple[str, str], SessionRecord] = {}  # (user, pid) -> record
        self.revoked: dict[str, int] = {}  # user -> ms of the revocation (a kick)
        self.online: list[tuple[str, bool]] = []
        self.last_message = b""  # the last message published, as subscribers receive it
        self._sink: BusSink | None = None

    # -- what a test does to it

    def tick(self, ms: int = 1) -> None:
        self.ms += ms

    def emit(self, room: str | None, data: Any, event: str = EVENT) -> Position:
        """A producer publishes an event (to everyone when `room` is None): its position."""
        return self._add(encode_event(event, data, room, time.time() * 1000), room)

    def _add(self, envelope: bytes, room: str | None) -> Position:
        """XADD to the room's stream (EVERYONE's for None), then the message on its channel."""
        stream_room = room if room is not None else EVERYONE
        stream = self.streams.setdefault(stream_room, FakeStream())
        last = stream.last
        at = Position(last.ms, last.seq + 1) if last.ms >= self.ms else Position(self.ms, 0)
        stream.entries.append((at, envelope))
        stream.added += 1
        stream.last = at
        self._deliver(with_position(envelope, at), stream_room)
        return at

    def control(self, kind: str, user: str, rooms: Sequence[str] | None = None) -> dict[str, Position] | None:
        """A producer's join / leave / kick: each room's position read first (position.lua), then
        the message on the channel of `user:<u>`, with no history. The positions it carries."""
        at = {room: self.position_now(room) for room in rooms} if rooms is not None else None
        self._deliver(encode_control(kind, user, at, time.time() * 1000), user_room(user))
        return at

    def emit_scoped(self, rooms: Sequence[str] | None, data: Any, excluded: Sequence[str] = ()) -> None:
        """An event for several rooms (None: everyone) minus `excluded`, as
        `Commands.scoped` publishes it: a copy per room, each naming every target and except room."""
        scope = encode_scope(rooms or (), excluded)
        for room in sorted(set(rooms)) if rooms is not None else [None]:
            self._add(encode_event(EVENT, data, room, time.time() * 1000, scope), room)

    def room_control(self, kind: str, room: str | None, rooms: Sequence[str] | None = None,
                     excluded: Sequence[str] = ()) -> None:
        """A control about the sockets in `room` (None: every socket), on that room's channel."""
        at = {name: self.position_now(name) for name in rooms} if rooms is not None else None
        self._deliver(encode_room_control(kind, room, at, excluded, time.time() * 1000),
                      room if room is not None else EVERYONE)

    def position_now(self, room: str) -> Position:
        """What position.lua answers: the stream's newest entry, or "empty at now"."""
        stream = self.streams.get(room)
        if stream is not None and stream.entries:
            return stream.entries[-1][0]
        return Position(self.ms - 1, EMPTY_SEQ)

    def trim(self, room: str, n: int) -> None:
        """Drop the `n` oldest entries of a room's stream, as MAXLEN trimming does."""
        stream = self.streams[room]
        del stream.entries[:n]

    def lose_writes(self, room: str, n: int) -> None:
        """A failover: the promoted replica never received the room's `n` newest entries (they
        were delivered live). Time moves on: the next entries get new IDs."""
        stream = self.streams[room]
        del stream.entries[len(stream.entries) - n:]
        stream.added -= n
        stream.last = stream.entries[-1][0] if stream.entries else Position(0, 0)
        self.tick()

    def lose_stream(self, room: str) -> None:
        """The room's stream is gone within its lifetime (a flush, a restart without persistence)."""
        self.streams.pop(room, None)
        self.tick()

    def expire(self, room: str) -> None:
        """The stream expires after a quiet spell longer than its lifetime."""
        self.tick(self.lifetime_ms + 1)
        self.streams.pop(room, None)

    def _deliver(self, message: bytes, channel: str) -> None:
        self.last_message = message
        sink = self._sink
        if sink is not None and channel in self.channels and channel not in self.down:
            asyncio.get_running_loop().call_soon(sink.on_message, message)  # as a subscriber reads it

    def _check(self) -> None:
        if not self.available:
            raise BusUnavailable("fake bus down")

    # -- the Backend

    @property
    def connected(self) -> bool:
        return self.available

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
        self._check()
        return str(self.emit(room, data, event))

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        self._check()
        return {room: self.position_now(room) for room in rooms}

    async def history(self, spans: Sequence[Span]) -> dict[str, Entries | None]:
        self.history_reads.append(list(spans))
        gate = self.history_gates.popleft() if self.history_gates else self.history_gate
        if gate is not None:
            await gate.wait()
        if not (self.available and self.history_available):
            raise BusUnavailable("fake bus down")
        return {room: self._replay(room, after, until) for room, after, until in spans}

    def _replay(self, room: str, after: Position, until: Position | None) -> Entries | None:
        """history.lua's rules: exact, or None."""
        stream = self.streams.get(room)
        empty_at_start = after.seq == EMPTY_SEQ
        if stream is None:
            return [] if empty_at_start or after.ms < self.ms - self.lifetime_ms else None
        if empty_at_start:
            if stream.added != len(stream.entries):
                return None
        elif not any(at == after for at, _ in stream.entries):
            return None
        return [(at, raw) for at, raw in stream.entries if at > after and (until is None or at <= until)]

    def save_session(self, pid: str, record: SessionRecord) -> None:
        self.sessions[(record.user, pid)] = record

    async def load_session(self, user: str, pid: str) -> tuple[SessionRecord, int] | None:
        self._check()
        record = self.sessions.get((user, pid))
        if record is None:
            return None
        return record, self.revoked.get(user, 0)

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        record = self.sessions.get((user, pid))
        if record is not None:
            self.sessions[(user, pid)] = dataclasses.replace(record, alive_ms=t_ms)

    def drop_session(self, pid: str, user: str) -> None:
        self.sessions.pop((user, pid), None)

    def session_rooms(self, pid: str, user: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        """As writes.lua's `R`: a join sets the room's start and marks it entered outside the
        token (`extra`); a leave records where."""
        record = self.sessions.get((user, pid))
        if record is None:
            return
        starts, left = dict(record.starts), dict(record.left)
        extra = [r for r in record.extra if r != room]
        if change == "j":
            left.pop(room, None)
            if at:
                starts[room] = at
            extra.append(room)
        elif at:
            left[room] = at
        self.sessions[(user, pid)] = dataclasses.replace(
            record, rooms=tuple(rooms), starts=starts, left=left, extra=tuple(extra))

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

    def _rooms_changed(self, conn: Conn, rooms: list[str], room: str, change: str, at: Position | None) -> None:
        """As the server's: the session record follows a connected socket's rooms."""
        self.room_changes.append((conn.sid, room, change, at))
        if conn.pid is not None:
            self.recovery.rooms_changed(conn.pid, conn.identity.user_id, rooms, room, change, at)

    async def start(self) -> Replica:
        await self.bus.start(self.core)
        return self

    async def connect(self, user: str = "1", *, role: str = "student", classrooms: tuple[str, ...] = (),
                      ) -> tuple[Conn, FakeSocket]:
        """A fresh socket, as `ConnectSequence._fresh` makes one (no session): registered, its
        token's rooms attached, then its CONNECT reply written."""
        identity = Identity(user, role, classrooms)
        sock = FakeSocket()
        sid = self._new_sid()
        conn = Conn(sid, "e" + sid, identity, sock, None)
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

    # -- a shard's channels going away and coming back, as the bus's subscriber reports it

    def channels_lost(self, rooms: Sequence[str]) -> None:
        """The connection to the shard of `rooms` dropped: their messages no longer arrive."""
        assert isinstance(self.bus, FakeBus)
        self.bus.down.update(rooms)
        self.core.channels_lost(rooms)

    def channels_restoring(self, rooms: Sequence[str]) -> None:
        """Connected again, SUBSCRIBE sent: messages arrive as each channel is confirmed."""
        assert isinstance(self.bus, FakeBus)
        self.bus.down.difference_update(rooms)
        self.core.channels_restoring(rooms)

    async def channels_restored(self, rooms: Sequence[str]) -> None:
        await self.core.channels_restored(rooms)


async def turns(n: int = 5) -> None:
    """Let the loop run `n` turns: messages the bus scheduled are delivered, spawned tasks run."""
    for _ in range(n):
        await asyncio.sleep(0)
