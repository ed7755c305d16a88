"""Publisher calls turned into script invocations: checks, names and envelopes, no I/O.

Events are checked and encoded one by one (`Commands.event`: an `Emit`), then published
together: one publish.lua call carries many events (`Commands.publish`, `publish_all`), so
that Redis pays a script call and a wake-up per batch, not per event.

Shared by the sync and async publishers and their batches, so the two cannot drift apart.
Every check runs here, before anything is sent: a bad argument costs no round trip and leaves
nothing half-done. What can be computed once per publisher (name heads, the string arguments,
the packed head and tail of a publish) is computed in `__init__`; `event` is the producer's
hot path.

Every call names the keys of one slot (docs/wire-protocol.md, "Names"), its first key being
the one a cluster transport routes by: an event goes to the room's shard, a join, leave or
kick to the user's, each position read to its room's, presence to the user's and the
`{replicas}` slot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from redis.crc import key_slot

from publisher.envelope import (
    EVERYONE,
    KIND_JOIN,
    KIND_KICK,
    KIND_LEAVE,
    KIND_ROOM_KICK,
    MAX_SCOPE_ROOMS,
    REPLICA_TTL_MS,
    ROOM_CONTROL_KINDS,
    BusNames,
    Position,
    encode_control,
    encode_event,
    encode_room_control,
    encode_scope,
)
from publisher.events import MAX_PAYLOAD_BYTES, check_event_name, sanitize, validate
from publisher.rooms import check_room, normalize_user_id, parse_room, user_room
from publisher.scripts import CONTROL, ONLINE, POSITION, PUBLISH, REPLICAS, REVOKE, ROOMS, Script

Arg = str | bytes | int

MAX_EVENTS_PER_CALL: Final = 256  # events in one publish.lua call: a call blocks Redis, keep it short


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(args: Iterable[Arg]) -> bytes:
    """A command in RESP, as a client sends it (an array of bulk strings).

    Ours rather than redis-py's packer, which costs several µs per command: a publish is
    mostly constant parts, packed once per publisher (see `Commands.event`).
    """
    parts = [
        _bulk(arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int)
              else arg)
        for arg in args
    ]
    return b"*%d\r\n%b" % (len(parts), b"".join(parts))


class Call(NamedTuple):
    """One script invocation, packed for EVALSHA, with what the EVAL fallback needs."""

    script: Script
    packed: bytes  # EVALSHA sha numkeys keys... args..., in RESP
    args: tuple[Arg, ...]  # numkeys, keys..., args...

    @classmethod
    def of(cls, script: Script, *args: Arg) -> Call:
        return cls(script, pack(("EVALSHA", script.sha, *args)), args)

    def eval_packed(self) -> bytes:
        """The same call carrying the script's body, for when Redis lost its script cache."""
        return pack(("EVAL", self.script.source, *self.args))


class Emit(NamedTuple):
    """One event, checked and encoded, waiting for a publish call (`Commands.publish`).

    Its RESP parts are packed once here: a batch of emits is the concatenation of them.
    """

    key: str  # the room's history stream: the call's routing key on a cluster
    channel: str
    envelope: bytes  # without "o": the script adds the position
    key_bulk: bytes  # `key` in RESP
    pair_bulk: bytes  # channel and envelope in RESP

    def slot(self) -> int:
        """The cluster slot of the event's room (its keys and channel share it)."""
        return key_slot(self.key.encode())


def positions_of(reply: Sequence[Any]) -> list[str]:
    """The positions from a publish call's reply {position_1, receivers_1, ...}, in order."""
    return [p if isinstance(p, str) else p.decode("ascii") for p in reply[0::2]]


Plan = list[tuple[Call, list[int]]]  # publish calls, each with the indexes of its emits


def scatter(plan: Plan, replies: Sequence[Any], count: int) -> list[str]:
    """The positions of `count` emits, in their order, from the replies to a plan's calls."""
    positions = [""] * count
    for (_call, indexes), reply in zip(plan, replies, strict=True):
        for i, position in zip(indexes, positions_of(reply), strict=True):
            positions[i] = position
    return positions


class Message(NamedTuple):
    """One event of `emit_many`, with the same arguments as `emit` (`strict`: None follows
    the publisher's setting)."""

    event: str
    data: Any
    room: str | None = None
    user: str | int | None = None
    broadcast: bool = False
    strict: bool | None = None


def _now_ms() -> float:
    return time.time() * 1000


class Commands:
    """Builds the calls of one publisher, from its names and options."""

    __slots__ = (
        "_channel_head", "_history_head", "_lifetime", "_max_payload", "_maxlen", "_publish_head",
        "_publish_tail", "_revoke_px", "_strict", "names",
    )

    def __init__(self, names: BusNames, *, history_max_len: int = 1000,
                 recovery_window_s: float = 120, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 strict: bool = False) -> None:
        if isinstance(history_max_len, bool) or not isinstance(history_max_len, int) \
                or history_max_len < 1:
            raise ValueError(f"history_max_len must be a positive integer, got {history_max_len!r}")
        if isinstance(recovery_window_s, bool) or not isinstance(recovery_window_s, int | float) \
                or not 0 <= recovery_window_s <= 86_400:
            raise ValueError(
                f"recovery_window_s must be seconds from 0 to 86400, got {recovery_window_s!r}"
            )
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) \
                or max_payload_bytes < 2:
            raise ValueError(
                f"max_payload_bytes must be an integer of at least 2, got {max_payload_bytes!r}"
            )
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        window_ms = round(recovery_window_s * 1000)
        self.names = names
        self._strict = strict
        # A room's names are these heads, the room, and "}:h" or "}#" (asserted equal to
        # `BusNames` by the unit tests): cheaper than two method calls per publish.
        self._history_head = names.history_key("")[:-len("}:h")]
        self._channel_head = names.channel_head()
        # With no recovery window there is nothing to recover: "0" keeps no history.
        self._maxlen = str(history_max_len) if window_ms else "0"
        # A revocation outlives every session created before it: sessions live one window.
        self._revoke_px = str(max(2 * window_ms, 1000))
        self._max_payload = max_payload_bytes
        # A publish of N events is EVALSHA sha N key_1..key_N maxlen lifetime channel_1
        # envelope_1 ... channel_N envelope_N (publish.lua): the EVALSHA and sha, and the
        # maxlen and lifetime, never change.
        head = pack(("EVALSHA", PUBLISH.sha))
        self._publish_head = head[head.index(b"\r\n") + 2:]
        self._lifetime = str(2 * window_ms)
        self._publish_tail = _bulk(self._maxlen.encode()) + _bulk(self._lifetime.encode())

    # -- events ----------------------------------------------------------------------------

    def event(self, event: str, data: Any, room: str | None = None,
              user: str | int | None = None, broadcast: bool = False,
              strict: bool | None = None, *, scope: bytes = b"") -> Emit:
        """An event for one target: a room, a user's room, or everyone (the room `*`), checked
        and encoded; `publish` makes the call that sends it (with others). `scope`: the `rs`
        and `x` members of an event for several rooms (`scoped`).

        Any sanitised payload goes (the contract: any JSON-serialisable payload under the size
        limit). With `strict` (None: the publisher's setting) a payload of one of the five
        contract events must also match its schema, as the typed helpers always ask: a
        classroom-wide `notification:new` with `"userId": None` is a valid emit, not a
        valid `NotificationNew`.
        """
        if broadcast:
            if room is not None or user is not None:
                raise TypeError("emit takes exactly one target: room=, user= or broadcast=True")
        elif room is not None:
            if user is not None:
                raise TypeError("emit takes exactly one target: room=, user= or broadcast=True")
            check_room(room)
        elif user is not None:
            room = user_room(user)
        else:
            raise TypeError("emit needs a target: room=..., user=... or broadcast=True")
        check_event_name(event)
        if strict is None:
            strict = self._strict
        elif not isinstance(strict, bool):
            raise ValueError(f"strict must be True, False or None, got {strict!r}")
        if strict:
            validate(event, data)
        body = sanitize(data, self._max_payload)
        envelope = encode_event(event, body, room, _now_ms(), scope)
        tag = EVERYONE if room is None else room
        history = self._history_head + tag + "}:h"
        channel = self._channel_head + tag + "}#"
        return Emit(history, channel, envelope, _bulk(history.encode()),
                    _bulk(channel.encode()) + _bulk(envelope))

    def scoped(self, event: str, data: Any, rooms: Iterable[str] | None,
               excluded: Iterable[str] = (), strict: bool | None = None) -> list[Emit]:
        """An event for several rooms (None: everyone), minus the sockets in `excluded`: one
        copy per target room, each carrying every target and except room, so that a socket in
        two targets gets it once and one in an except room not at all (`envelope.Scope`)."""
        targets = sorted({check_room(room) for room in rooms}) if rooms is not None else []
        if rooms is not None and not targets:
            raise ValueError("emit_rooms needs at least one room (None: everyone)")
        skip = sorted({check_room(room) for room in excluded})
        if max(len(targets), len(skip)) > MAX_SCOPE_ROOMS:
            raise ValueError(f"an event takes at most {MAX_SCOPE_ROOMS} target and {MAX_SCOPE_ROOMS} except rooms")
        scope = encode_scope(targets, skip)
        if not targets:
            return [self.event(event, data, broadcast=True, strict=strict, scope=scope)]
        return [self.event(event, data, room, strict=strict, scope=scope) for room in targets]

    def room_control(self, kind: str, room: str | None, positions: Mapping[str, Position] | None,
                     excluded: Iterable[str] = ()) -> Call:
        """A control about the sockets in `room` (None: every socket) and in none of
        `excluded`: they join or leave the rooms of `positions` (each room's position from
        `positions()`), or are disconnected. On the room's shard, no history (`control.lua`).

        The room policy is the gateway's: a replica applies a join only where `may_join`
        allows it, so no producer can put a socket into another user's room."""
        if kind not in ROOM_CONTROL_KINDS:
            raise ValueError(f"unknown room control {kind!r}; expected rjoin, rleave or rkick")
        if room is not None:
            check_room(room)
        skip = sorted({check_room(name) for name in excluded})
        at = None
        if kind != KIND_ROOM_KICK:
            if not positions:
                raise ValueError(f"{kind} needs at least one room")
            at = {}
            for name, position in positions.items():
                check_room(name)
                if not isinstance(position, Position):
                    raise TypeError(f"{kind}: the position of {name} must be a Position, got {position!r}")
                at[name] = position
        tag = EVERYONE if room is None else room
        envelope = encode_room_control(kind, room, at, skip, _now_ms())
        return Call.of(CONTROL, 1, self.names.history_key(tag), self.names.room_channel(tag), envelope)

    def message(self, message: Message) -> Emit:
        return self.event(message.event, message.data, message.room, message.user,
                          message.broadcast, message.strict)

    def publish(self, emits: Sequence[Emit]) -> Call:
        """One publish.lua call for `emits` (at least one; all of one slot on a cluster): its
        reply is {position, receivers} per emit, in order (`positions_of`)."""
        n = len(emits)
        if not 0 < n <= MAX_EVENTS_PER_CALL:
            raise ValueError(f"a publish call carries 1 to {MAX_EVENTS_PER_CALL} events, got {n}")
        packed = b"".join((
            b"*%d\r\n" % (5 + 3 * n), self._publish_head, b"$%d\r\n%d\r\n" % (len(str(n)), n),
            *[emit.key_bulk for emit in emits], self._publish_tail,
            *[emit.pair_bulk for emit in emits],
        ))
        args: list[Arg] = [n, *[emit.key for emit in emits], self._maxlen, self._lifetime]
        for emit in emits:
            args += (emit.channel, emit.envelope)
        return Call(PUBLISH, packed, tuple(args))

    def publish_all(self, emits: Sequence[Emit], *, by_slot: bool) -> Plan:
        """The publish calls for `emits`, each with the indexes of the emits it carries.

        `by_slot` (a Redis Cluster): one call per slot, since a script's keys must share one;
        otherwise (one Redis) as few calls as the per-call limit allows. Within a room the
        order of `emits` is kept: a room is in one slot, and a call publishes in order.
        """
        if by_slot:
            groups: dict[int, list[int]] = {}
            for i, emit in enumerate(emits):
                groups.setdefault(emit.slot(), []).append(i)
            runs = list(groups.values())
        else:
            runs = [list(range(len(emits)))]
        out: Plan = []
        for run in runs:
            for start in range(0, len(run), MAX_EVENTS_PER_CALL):
                chunk = run[start:start + MAX_EVENTS_PER_CALL]
                out.append((self.publish([emits[i] for i in chunk]), chunk))
        return out

    # -- join and leave: positions first, then the user's sessions and sockets -------------

    def rooms(self, kind: str, user: str | int, rooms: str | Iterable[str]) -> tuple[str, tuple[str, ...]]:
        """The user id and the rooms of a join or leave, checked, deduplicated, in order.

        A producer may join a user to a room of any name, and to the user's own reserved rooms,
        never to another user's (`user:`, `teacher:`); and may not take a user out of their
        own `user:<id>` room.
        """
        if kind not in (KIND_JOIN, KIND_LEAVE):
            raise ValueError(f"unknown membership change {kind!r}; expected join or leave")
        uid = normalize_user_id(user)
        user_room(uid)  # the id is in the grammar: every name of the user is built from it
        given = (rooms,) if isinstance(rooms, str) else tuple(rooms)
        if not given:
            raise ValueError(f"{kind} needs at least one room")
        out: dict[str, None] = {}
        for room in given:
            room_kind, room_id = parse_room(room)
            if kind == KIND_JOIN and room_kind in {"user", "teacher"} and room_id != uid:
                raise ValueError(
                    f"join: {room} belongs to another user; the gateway lets a user into "
                    "their own rooms, classroom rooms and rooms outside the reserved "
                    "prefixes (user:, teacher:, admin:) only"
                )
            if kind == KIND_LEAVE and room_kind == "user" and room_id == uid:
                raise ValueError(f"leave: {room} is the user's own room and cannot be left")
            out[room] = None
        return uid, tuple(out)

    def positions(self, rooms: Iterable[str]) -> list[Call]:
        """Phase 1 of a join or leave: each room's position now, read on the room's shard
        (`position.lua`: the newest entry, or "empty at ms"). Rooms as `rooms` gave them."""
        return [Call.of(POSITION, 1, self.names.history_key(check_room(room))) for room in rooms]

    def membership(self, kind: str, user: str | int, positions: Mapping[str, Position]) -> Call:
        """Phase 2: on the user's shard, edit every recoverable session of the user and tell the
        replicas holding the user's sockets (`rooms.lua`); `positions` maps each room to its
        position from phase 1."""
        uid, rooms = self.rooms(kind, user, list(positions))
        at = {room: positions[room] for room in rooms}
        for room, position in at.items():
            if not isinstance(position, Position):
                raise TypeError(f"{kind}: the position of {room} must be a Position, got {position!r}")
        own = user_room(uid)
        envelope = encode_control(kind, uid, at, _now_ms())
        pairs = [part for room, position in at.items() for part in (room, str(position))]
        return Call.of(
            ROOMS, 1, self.names.user_sessions_key(uid), self.names.session_prefix(uid), kind, own,
            self.names.room_channel(own), envelope, *pairs,
        )

    # -- kick and presence -----------------------------------------------------------------

    def kick(self, user: str | int) -> Call:
        """On the user's shard: delete the user's sessions, mark the user revoked, then tell the
        replicas holding the user's sockets (`revoke.lua`): a session saved after the mark is
        already void."""
        uid = normalize_user_id(user)
        own = user_room(uid)
        envelope = encode_control(KIND_KICK, uid, None, _now_ms())
        return Call.of(
            REVOKE, 2, self.names.user_sessions_key(uid), self.names.revoked_key(uid),
            self.names.session_prefix(uid), self._revoke_px, self.names.room_channel(own), envelope,
        )

    def is_online(self, user: str | int) -> tuple[Call, Call]:
        """The replicas where the user has a socket (on the user's shard), and the live
        replicas (the `{replicas}` slot): online if the two meet. One `run`, both calls."""
        uid = normalize_user_id(user)
        user_room(uid)
        return Call.of(ONLINE, 1, self.names.presence_key(uid)), self.online_count()

    def online_count(self) -> Call:
        """The live replicas and how many users each holds (`replicas.lua`)."""
        return Call.of(
            REPLICAS, 2, self.names.replicas_key(), self.names.replica_users_key(), REPLICA_TTL_MS,
        )
