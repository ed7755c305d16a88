"""The client manager: python-socketio's manager, with delivery and rooms done by the bus.

`RedisManager` is a `socketio.AsyncRedisManager` and `LocalManager` a `socketio.AsyncManager`;
both take the same `DeliveryCore`, which replaces the stock cross-host protocol (every replica
decoding every message on one channel) with per-room channels (`docs/wire-protocol.md`):

- in: a bus message is decoded once, turned into one `Outgoing` (the frame built once), and
  written to the room's local sockets by a loop over a dict: no task, no queue per recipient;
- rooms: a socket entering a room that has no other local socket subscribes its channel, and
  the last one out unsubscribes it; entering is always through `rooms.may_join`;
- attach: a socket entering rooms (connect, recovery, a producer's `join`) holds its live
  events while the subscriptions confirm and history is read, then gets both, merged in order,
  once each (`connections.Conn`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import socketio

from gateway.bus.contract import EVERYONE, Backend, BusUnavailable, Position, Span, order_key
from gateway.delivery.frames import eio_message_frame, event_packet
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.policy.rooms import may_join, may_leave
from publisher.envelope import Control, EnvelopeError, Event, decode
from publisher.rooms import user_room

log = logging.getLogger("gateway.delivery")

NAMESPACE = "/notifications"


class HistoryLost(Exception):
    """A recovery cannot be complete: events after the client's offset are gone."""


def outgoing(event: Event, with_offset: bool, *, replay: bool = False) -> Outgoing:
    text = event_packet(event.ev, event.d, event.o if with_offset else None)
    return Outgoing(order_key(event.ms, event.seq), event.ev, text, eio_message_frame(text), event.t, replay)


def _nothing() -> None:
    return None


def _by_key(out: Outgoing) -> int:
    return out.key


class DeliveryCore:
    """Everything between the bus and the sockets of this replica (see the module docstring)."""

    def __init__(self, backend: Backend, metrics: Any, *, recovery: bool) -> None:
        self.backend = backend
        self.metrics = metrics
        self.registry = Registry()
        self.recovery = recovery
        self.epoch: str | None = None
        self._last: Event | Control | None = None  # the newest message received from the bus
        self._baseline: Position | None = None  # the bus position at the last (re)subscription
        self._locks: dict[str, asyncio.Lock] = {}
        self.connecting: set[str] = set()  # sids between CONNECT and its reply: the server flushes them
        self._tasks: set[asyncio.Task[Any]] = set()
        self.kick_handler: Any = None  # set by the server: disconnects a socket with a reason
        self.on_rooms_changed: Any = None  # set by the server: saves the session's new rooms
        self.batch_begin: Any = _nothing  # set by the server: the engine's begin/end_batch
        self.batch_end: Any = _nothing

    # -- inbound ---------------------------------------------------------------------------------

    def on_message(self, raw: bytes) -> None:
        try:
            message = decode(raw)
        except EnvelopeError as exc:
            self.metrics.error("bus_bad_envelope")
            log.warning("bus message refused: %s", exc)
            return
        if message.epoch != self.epoch:
            self._new_epoch(message.epoch)
        self._last = message
        if isinstance(message, Event):
            self.metrics.bus_received("event")
            self._deliver(message)
        else:
            self.metrics.bus_received("control")
            self._control(message)

    def _new_epoch(self, epoch: str) -> None:
        """Redis lost its data (restart, flush): positions start again from 1.

        Every socket's dedup mark is reset, or the new, smaller positions would be taken
        for events it already has.
        """
        if self.epoch is not None:
            log.warning("bus epoch changed: redis lost its history", extra={"epoch": epoch})
            self.metrics.bus_event("epoch_change")
            for conn in self.registry.by_sid.values():
                conn.last_key = 0
        self.epoch = epoch

    def _deliver(self, event: Event) -> None:
        room = event.r
        if room is None:
            targets: Iterable[Conn] = self.registry.by_sid.values()
        else:
            members = self.registry.rooms.get(room)
            if not members:
                return
            targets = members.values()
        out = outgoing(event, self.recovery)
        written = 0
        for conn in targets:
            if conn.deliver(out):
                written += 1
        if written:
            self.metrics.sent(out.event, written, out.t_ms)

    def _control(self, control: Control) -> None:
        members = self.registry.rooms.get(user_room(control.u))
        if not members:
            return
        conns = list(members.values())
        if control.k == "kick":
            for conn in conns:
                conn.pid = None  # its sessions were deleted by the publisher; do not save it again
                if self.kick_handler is not None:
                    self._spawn(self.kick_handler(conn, "kicked"))
        elif control.k == "join":
            since = Position(control.epoch, control.ms, control.seq)
            for conn in conns:
                rooms = [r for r in control.rooms if may_join(conn.identity, r)]
                if rooms:
                    self._spawn(self.enter(conn, rooms, since=since))
        elif control.k == "leave":
            at = Position(control.epoch, control.ms, control.seq)
            for conn in conns:
                for room in control.rooms:
                    if may_leave(conn.identity, room):
                        self.leave(conn, room, at)

    # -- rooms -------------------------------------------------------------------------------------

    async def attach_rooms(self, conn: Conn, rooms: Sequence[str]) -> Position | None:
        """Put a new socket in its rooms; returns the bus position its session starts at.

        The position is read after the subscriptions are confirmed: every event after it
        reaches this socket live (held in `conn.pending` until the server flushes it).
        """
        await self._subscribe([r for r in rooms if self.registry.join(conn, r)])
        try:
            return await self.backend.position()
        except BusUnavailable:
            return None

    async def recover_rooms(self, conn: Conn, spans: Sequence[Span]) -> None:
        """Put a restored socket back in its rooms, with each room's events after its start
        queued ahead of the live ones (merged in order when the server flushes `conn.pending`).
        A span with an end is a room left while away: replayed up to the leave, not rejoined.

        Raises HistoryLost when part of that history is gone.
        """
        await self._subscribe([room for room, _, end in spans
                               if end is None and room != EVERYONE and self.registry.join(conn, room)])
        try:
            messages = await self.backend.history(spans)
        except BusUnavailable:
            messages = None
        if messages is None:
            raise HistoryLost("the history after this offset is gone")
        conn.pending = [out for _, out in self._decode_all(messages)] + (conn.pending or [])

    async def enter(self, conn: Conn, rooms: Sequence[str], since: Position | None) -> None:
        """Add rooms to a connected socket; with `since`, deliver what they got after it."""
        lock = self._locks.setdefault(conn.sid, asyncio.Lock())
        async with lock:
            if self.registry.get(conn.sid) is not conn:
                return
            fresh = [r for r in rooms if r not in conn.rooms]
            if not fresh:
                return
            if conn.pending is None:
                conn.pending = []
            history: list[Outgoing] = []
            try:
                await self._subscribe([r for r in fresh if self.registry.join(conn, r)])
                if since is not None:
                    try:
                        messages = await self.backend.history([(room, since, None) for room in fresh])
                    except BusUnavailable:
                        messages = None
                    history = [out for _, out in self._decode_all(messages or [])]
            finally:
                conn.attach(history, self.metrics)
            if self.on_rooms_changed is not None:
                if since is None:
                    try:
                        since = await self.backend.position()
                    except BusUnavailable:
                        since = None
                for room in fresh:
                    self.on_rooms_changed(conn, room, "j", since)
        if not lock.locked():
            self._locks.pop(conn.sid, None)

    def leave(self, conn: Conn, room: str, at: Position | None = None) -> None:
        """Take `conn` out of `room`; `at` is where on the bus it left (a producer's leave),
        kept in its session so that a recovery replays the room up to there."""
        if room not in conn.rooms:
            return
        if self.registry.leave(conn, room):
            self.backend.unsubscribe(room)
        if self.on_rooms_changed is not None:
            self.on_rooms_changed(conn, room, "l", at)

    def detach(self, sid: str) -> Conn | None:
        conn, emptied = self.registry.remove(sid)
        self.connecting.discard(sid)
        for room in emptied:
            self.backend.unsubscribe(room)
        self._locks.pop(sid, None)
        return conn

    async def _subscribe(self, rooms: list[str]) -> None:
        if not rooms:
            return
        if len(rooms) == 1:
            await self.backend.subscribe(rooms[0])
        else:
            await asyncio.gather(*(self.backend.subscribe(r) for r in rooms))

    def _decode_all(self, messages: list[bytes]) -> list[tuple[str | None, Outgoing]]:
        out = []
        for raw in messages:
            try:
                message = decode(raw)
            except EnvelopeError:
                self.metrics.error("bus_bad_envelope")
                continue
            if isinstance(message, Event):
                out.append((message.r, outgoing(message, self.recovery, replay=True)))
        return out

    # -- the bus going away and coming back ----------------------------------------------------

    async def on_bus_up(self) -> None:
        """Before resubscribing: hold every socket's live events for the catch-up."""
        for conn in self.registry.by_sid.values():
            if conn.pending is None:
                conn.pending = []

    async def on_bus_resubscribed(self) -> None:
        """Deliver what was published while the bus was away, then live events again.

        The catch-up starts from the newest position this replica knows: the last message it
        received, or where it stood at its previous (re)connection if it received none since.
        If Redis lost its data meanwhile (a new epoch), all of the new epoch is newer than
        anything delivered: it is replayed from its start.
        """
        conns = [c for c in self.registry.by_sid.values() if c.pending is not None]
        since = self._known_position()
        try:
            current: Position | None = await self.backend.position()
        except BusUnavailable:
            current = None
        by_room: dict[str, list[Outgoing]] = {}
        if current is not None and since is not None and conns:
            if since.epoch != current.epoch:
                self._new_epoch(current.epoch)
                since = Position(current.epoch, 0, 0)
            rooms = [*sorted({r for c in conns for r in c.rooms}), EVERYONE]
            try:
                messages = await self.backend.history([(room, since, None) for room in rooms])
            except BusUnavailable:
                messages = None
            if messages is None:
                self.metrics.bus_event("catchup_gap")
                log.warning("bus catch-up impossible: history lost while disconnected")
            for room, out in self._decode_all(messages or []):
                by_room.setdefault(room if room is not None else EVERYONE, []).append(out)
        if current is not None:
            self._baseline = current
        for conn in conns:
            if self._releasable(conn):
                mine = [o for r in (*conn.rooms, EVERYONE) for o in by_room.get(r, ())]
                conn.attach(sorted(mine, key=_by_key), self.metrics)

    def _known_position(self) -> Position | None:
        last, baseline = self._last, self._baseline
        if last is None:
            return baseline
        if baseline is not None and baseline.epoch == last.epoch and baseline.key > order_key(last.ms, last.seq):
            return baseline
        if baseline is not None and baseline.epoch != last.epoch and baseline.epoch == self.epoch:
            return baseline
        return Position(last.epoch, last.ms, last.seq)

    def _releasable(self, conn: Conn) -> bool:
        """Held for the bus, not by a connect or an `enter` that will flush it itself."""
        return (self.registry.get(conn.sid) is conn and conn.sid not in self.connecting
                and conn.sid not in self._locks)

    def on_bus_down(self) -> None:
        """Let held sockets go: while the bus is away, local delivery must keep working."""
        for conn in self.registry.by_sid.values():
            if conn.pending is not None and self._releasable(conn):
                conn.attach([], self.metrics)

    def batch_hooks(self) -> tuple[Any, Any]:
        """(begin, end) around each read from the bus: the writes of a read leave together."""
        return self.batch_begin, self.batch_end

    def heartbeat_snapshot(self) -> tuple[list[str], list[str]]:
        users = []
        pids = []
        for conn in self.registry.by_sid.values():
            if conn.pid is not None:
                pids.append(conn.pid)
        for room in self.registry.rooms:
            if room.startswith("user:"):
                users.append(room[5:])
        return users, pids

    # -- outbound --------------------------------------------------------------------------------

    async def publish(self, event: str, data: Any, room: str | None) -> str:
        return await self.backend.publish_event(event, data, room)

    def deliver_locally(self, event: str, data: Any, room: str | None) -> int:
        """When the bus is down: write to this replica's sockets, without position or history."""
        text = event_packet(event, data, None)
        frame = eio_message_frame(text)
        targets = (self.registry.by_sid.values() if room is None
                   else list(self.registry.rooms.get(room, {}).values()))
        n = 0
        for conn in targets:
            if conn.pending is None:
                conn.eio.push_message(text, frame)
                n += 1
        self.metrics.sent(event, n, time.time() * 1000)
        return n

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _CoreManager:
    """What both managers share: python-socketio's room API answered by the `DeliveryCore`."""

    core: DeliveryCore
    # python-socketio's BaseManager attributes, which this mixin reads
    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]
    server: Any

    def initialize(self) -> None:
        # The stock managers start a listener here (AsyncPubSubManager._thread); the core's
        # backend is started by the app factory instead.
        return None

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        """`sio.emit(...)` from application code: through the bus, like any producer."""
        target = to or room
        if callback is not None or skip_sid is not None:
            raise ValueError("callbacks and skip_sid are not supported by the notification bus")
        if isinstance(target, list | tuple):
            for one in target:
                await self.core.publish(event, data, one)
            return
        await self.core.publish(event, data, target)

    async def enter_room(self, sid: str, namespace: str, room: str, eio_sid: str | None = None) -> None:
        if room == sid or room is None:  # python-socketio's own bookkeeping rooms
            await super().enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
            return
        conn = self.core.registry.get(sid)
        if conn is None:
            raise ValueError(f"{sid} is not connected to this replica")
        if not may_join(conn.identity, room):
            raise PermissionError(f"room {room!r} is not allowed for user {conn.identity.user_id}")
        await self.core.enter(conn, [room], since=None)

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        conn = self.core.registry.get(sid)
        if conn is None or not may_leave(conn.identity, room):
            return
        self.core.leave(conn, room)

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        conn = self.core.registry.get(sid)
        return sorted(conn.rooms) if conn is not None else []

    def get_participants(self, namespace: str, room: str) -> Any:
        for conn in self.core.registry.members(room):
            yield conn.sid, conn.eio_sid

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's version scans every room of the namespace for the sid, which is
        quadratic in a disconnect storm; here a socket is only ever in its own two rooms."""
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        for room in (sid, None):
            members = rooms.get(room)
            if members is not None and sid in members:
                del members[sid]
                if not members:
                    del rooms[room]
        self.callbacks.pop(sid, None)
        for table in (self.pending_connect, self.pending_disconnect):
            waiting = table.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del table[namespace]
        if not rooms:
            del self.rooms[namespace]

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        return bool(self.is_connected(sid, namespace))  # type: ignore[attr-defined]

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Every way out goes through here: the server forgets the socket's rooms and session."""
        gone = getattr(self.server, "socket_gone", None)
        if gone is not None:
            gone(sid)
        self.basic_disconnect(sid, namespace)


class LocalManager(_CoreManager, socketio.AsyncManager):  # type: ignore[misc]
    """One replica, no Redis: python-socketio's in-memory manager with the core's delivery."""

    def __init__(self, core: DeliveryCore) -> None:
        socketio.AsyncManager.__init__(self)
        self.core = core


class RedisManager(_CoreManager, socketio.AsyncRedisManager):  # type: ignore[misc]
    """Replicas sharing rooms through Redis: python-socketio's Redis manager, with the stock
    one-channel protocol replaced by the per-room channels of `docs/wire-protocol.md`."""

    def __init__(self, core: DeliveryCore, url: str) -> None:
        socketio.AsyncRedisManager.__init__(self, url, channel="socket.io-unused")
        self.core = core

    async def _publish(self, data: Any) -> None:
        # python-socketio's cross-host messages (remote disconnect, remote room changes) are
        # replaced by the bus's control messages; nothing in the gateway sends them.
        log.error("stock python-socketio pub/sub message dropped: %s", data.get("method"))
