"""Publisher calls turned into script invocations: checks, names and envelopes, no I/O.

Shared by the sync and async publishers and their batches, so the two cannot drift apart.
Every check runs here, before anything is sent: a bad argument costs no round trip and leaves
nothing half-done. What can be computed once per publisher (key and channel heads, the string
arguments) is computed in `__init__`; `event` is the producer's hot path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from publisher.envelope import (
    KIND_JOIN,
    KIND_KICK,
    KIND_LEAVE,
    NAMESPACE,
    REPLICA_TTL_MS,
    BusNames,
    encode_control,
    encode_event,
)
from publisher.events import MAX_PAYLOAD_BYTES, check_event_name, sanitize, validate
from publisher.rooms import check_room, normalize_user_id, parse_room, user_room
from publisher.scripts import PRESENCE, PUBLISH, REVOKE, ROOMS, Script

Arg = str | bytes | int


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(args: Iterable[Arg]) -> bytes:
    """A command in RESP, as a client sends it (an array of bulk strings).

    Ours rather than redis-py's packer, which costs several µs per command: a publish is
    mostly constant parts, packed once per publisher (see `Commands._publish`).
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


class Message(NamedTuple):
    """One event of `emit_many`, with the same arguments as `emit` (`strict`: None follows
    the publisher's setting)."""

    event: str
    data: Any
    room: str | None = None
    user: str | int | None = None
    broadcast: bool = False
    strict: bool | None = None


def _epoch_candidate() -> str:
    # Fresh for every call, never reused: a publisher that kept one candidate could bring an
    # old epoch back after a second data loss (and forked workers would share it).
    return os.urandom(8).hex()


def _now_ms() -> float:
    return time.time() * 1000


class Commands:
    """Builds the calls of one publisher, from its names and options."""

    __slots__ = (
        "_broadcast", "_broadcast_history", "_channel_head", "_clock", "_history_head", "_max_payload", "_maxlen",
        "_online_head", "_publish_head", "_publish_tail", "_replicas", "_revoke_px",
        "_session_head", "_strict", "_window", "names",
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
        self._clock = names.clock_key()
        self._channel_head = f"{names.channel_prefix}#{NAMESPACE}#"
        self._broadcast = names.broadcast_channel()
        self._history_head = names.history_key("")
        self._broadcast_history = names.broadcast_history_key()
        self._session_head = names.session_key("")
        self._online_head = names.online_key("")
        self._replicas = names.replicas_key()
        self._maxlen = str(history_max_len)
        self._window = str(window_ms)
        # A revocation outlives every session created before it: sessions live one window.
        self._revoke_px = str(max(2 * window_ms, 1000))
        self._max_payload = max_payload_bytes
        # A publish is EVALSHA sha 2 clock history channel envelope epoch maxlen window: 10
        # items, of which the first four and the last two never change.
        self._publish_head = pack(("EVALSHA", PUBLISH.sha, 2, self._clock))
        self._publish_head = b"*10" + self._publish_head[self._publish_head.index(b"\r\n"):]
        self._publish_tail = _bulk(self._maxlen.encode()) + _bulk(self._window.encode())

    def _publish(self, channel: str, history: str, envelope: bytes) -> Call:
        epoch = _epoch_candidate()
        packed = b"".join((
            self._publish_head, _bulk(history.encode()), _bulk(channel.encode()),
            _bulk(envelope), _bulk(epoch.encode()), self._publish_tail,
        ))
        return Call(PUBLISH, packed, (
            2, self._clock, history, channel, envelope, epoch, self._maxlen, self._window,
        ))

    def event(self, event: str, data: Any, room: str | None = None,
              user: str | int | None = None, broadcast: bool = False,
              strict: bool | None = None) -> Call:
        """An event for one target: a room, a user's room, or everyone.

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
        envelope = encode_event(event, body, room, _now_ms())
        keep = self._window != "0"  # with no recovery window there is nothing to recover
        if room is None:
            return self._publish(self._broadcast, self._broadcast_history if keep else "", envelope)
        history = self._history_head + room if keep else ""
        return self._publish(self._channel_head + room + "#", history, envelope)

    def message(self, message: Message) -> Call:
        return self.event(message.event, message.data, message.room, message.user,
                          message.broadcast, message.strict)

    def _rooms(self, kind: str, user: str, rooms: str | Iterable[str]) -> tuple[str, ...]:
        given = (rooms,) if isinstance(rooms, str) else tuple(rooms)
        if not given:
            raise ValueError(f"{kind} needs at least one room")
        out: dict[str, None] = {}
        for room in given:
            room_kind, room_id = parse_room(room)
            if kind == KIND_JOIN and room_kind in {"user", "teacher"} and room_id != user:
                raise ValueError(
                    f"join: {room} belongs to another user; the gateway lets a user into "
                    "their own rooms, classroom rooms and rooms outside the reserved "
                    "prefixes (user:, teacher:, admin:) only"
                )
            if kind == KIND_LEAVE and room_kind == "user" and room_id == user:
                raise ValueError(f"leave: {room} is the user's own room and cannot be left")
            out[room] = None
        return tuple(out)

    def membership(self, kind: str, user: str | int, rooms: str | Iterable[str]
                   ) -> tuple[Call, Call]:
        """join/leave: edit the user's saved sessions, then tell the replicas holding them."""
        uid = normalize_user_id(user)
        own = user_room(uid)
        wanted = self._rooms(kind, uid, rooms)
        sessions = Call.of(
            ROOMS, 2, self.names.user_sessions_key(uid), self.names.clock_key(), self._session_head, kind,
            own, *wanted,
        )
        envelope = encode_control(kind, uid, wanted, _now_ms())
        return sessions, self._publish(self._channel_head + own + "#", "", envelope)

    def kick(self, user: str | int) -> tuple[Call, Call]:
        """Revoke first, then tell the replicas: a session saved in between is already void."""
        uid = normalize_user_id(user)
        own = user_room(uid)
        revoke = Call.of(
            REVOKE, 2, self.names.user_sessions_key(uid), self.names.revoked_key(uid),
            self._session_head, self._revoke_px,
        )
        envelope = encode_control(KIND_KICK, uid, None, _now_ms())
        return revoke, self._publish(self._channel_head + own + "#", "", envelope)

    def is_online(self, user: str | int) -> Call:
        uid = normalize_user_id(user)
        return Call.of(
            PRESENCE, 1, self._replicas, self._online_head, "online", uid, REPLICA_TTL_MS,
        )

    def online_count(self) -> Call:
        return Call.of(
            PRESENCE, 1, self._replicas, self._online_head, "count", "", REPLICA_TTL_MS,
        )
