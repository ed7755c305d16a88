"""The bus wire format, version 2: the one definition that producers and the gateway import.

docs/wire-protocol.md is the spec; this module is its executable form. Names (channels and
keys) come from `BusNames`, so a prefix change cannot reach one side only; every name of a room
carries the room as a Redis Cluster hash tag, so all that one publish touches is in one slot.
Encoding is for producers and leaves the position `o` out: only the publish script may assign
it. Decoding runs on the gateway for every message of every room, so it does one
`orjson.loads` and only the checks without which a replica would misroute or crash; anything
else it refuses with `EnvelopeError`, never another exception, because the input comes from
the network. The wire's one-letter keys stay here: `Event` and `Control` have full names.

A position is the ID of the message's entry in its room's history stream, `<ms>-<seq>`:
ordered within the room, unrelated across rooms.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from publisher.events import EVENT_NAME_RE, RESERVED_EVENTS
from publisher.rooms import InvalidRoom, parse_room, user_room

VERSION: Final = 2
NAMESPACE: Final = "/notifications"
DEFAULT_CHANNEL_PREFIX: Final = "socket.io"
DEFAULT_KEY_PREFIX: Final = "ngw"

KIND_EVENT: Final = "e"
KIND_JOIN: Final = "join"
KIND_LEAVE: Final = "leave"
KIND_KICK: Final = "kick"
CONTROL_KINDS: Final = frozenset({KIND_JOIN, KIND_LEAVE, KIND_KICK})
# Controls about the sockets in a room rather than a user's: published on the room's channel,
# each replica applies them to its own sockets in that room (docs/wire-protocol.md).
KIND_ROOM_JOIN: Final = "rjoin"
KIND_ROOM_LEAVE: Final = "rleave"
KIND_ROOM_KICK: Final = "rkick"
ROOM_CONTROL_KINDS: Final = frozenset({KIND_ROOM_JOIN, KIND_ROOM_LEAVE, KIND_ROOM_KICK})
MAX_SCOPE_ROOMS: Final = 100  # target or except rooms of one event: bounded per-socket work

# The room that stands for "everyone": its stream holds the events sent to all.
EVERYONE: Final = "*"
# Presence (docs: "Presence"): a replica heartbeats every 5 s and counts as alive for 15 s.
REPLICA_HEARTBEAT_MS: Final = 5_000
REPLICA_TTL_MS: Final = 15_000

_POSITION = re.compile(r"([0-9]{1,15})-([0-9]{1,20})", re.ASCII)
_EVENT_HEAD: Final = b'{"v":%d,"k":"e","t":' % VERSION


class EnvelopeError(ValueError):
    """A bus message that is not a valid v2 envelope; the message says why."""


@dataclass(frozen=True, slots=True)
class BusNames:
    """Every channel and key name of the bus, from the two prefixes.

    Frozen so that one object can be shared by a publisher and its batches without anyone
    re-pointing it halfway.
    """

    channel_prefix: str = DEFAULT_CHANNEL_PREFIX
    key_prefix: str = DEFAULT_KEY_PREFIX

    def __post_init__(self) -> None:
        # `#` separates the parts of a channel name; braces would change the hash tag.
        for what, value, example in (("channel_prefix", self.channel_prefix, "socket.io"),
                                     ("key_prefix", self.key_prefix, "ngw")):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{what} must be a non-empty string, e.g. {example!r}")
            if "{" in value or "}" in value:
                raise ValueError(f"{what} {value!r} must not contain a brace: braces are Redis Cluster hash tags")
        if "#" in self.channel_prefix:
            raise ValueError(f"channel_prefix {self.channel_prefix!r} must not contain '#'")

    def room_channel(self, room: str) -> str:
        """The sharded channel of `room` (EVERYONE: events for everyone)."""
        return f"{self.channel_prefix}#{NAMESPACE}#{{{room}}}#"

    def channel_head(self) -> str:
        """What every room channel starts with, up to the room's `{`."""
        return f"{self.channel_prefix}#{NAMESPACE}#{{"

    def history_key(self, room: str) -> str:
        return f"{self.key_prefix}:{{{room}}}:h"

    def session_prefix(self, user: str) -> str:
        """The sessions of `user` are this prefix and a pid (the user's room is their hash tag)."""
        return f"{self.key_prefix}:{{user:{user}}}:s:"

    def session_key(self, user: str, pid: str) -> str:
        return self.session_prefix(user) + pid

    def user_sessions_key(self, user: str) -> str:
        """A sorted set: pid -> ms when that session expires (trimmed as sessions end)."""
        return f"{self.key_prefix}:{{user:{user}}}:sessions"

    def revoked_key(self, user: str) -> str:
        return f"{self.key_prefix}:{{user:{user}}}:revoked"

    def presence_key(self, user: str) -> str:
        """The replicas where `user` has a socket (a set of replica ids)."""
        return f"{self.key_prefix}:{{user:{user}}}:on"

    def replicas_key(self) -> str:
        """The live replicas: replica id -> ms of its last heartbeat."""
        return f"{self.key_prefix}:{{replicas}}:live"

    def replica_users_key(self) -> str:
        """How many users each replica holds: replica id -> count."""
        return f"{self.key_prefix}:{{replicas}}:users"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """An entry of a room's history stream: ordered within that room only."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


class Scope(NamedTuple):
    """Who among a copy's room gets it, for an event sent to several rooms and/or except rooms.

    An event for rooms A and B is published once in each room (each copy has its own position
    in its own room). A socket gets the copy of room r only if r is the first of `targets` that
    the socket is in, and the socket is in none of `excluded`: once, or not at all, on live
    delivery and on replay alike.
    """

    targets: tuple[str, ...]  # rs: every target room, in canonical (sorted) order; () for one
    excluded: frozenset[str]  # x

    def admits(self, room: str, member_of: Container[str]) -> bool:
        """Does a socket in the rooms `member_of` get the copy published in `room`?"""
        for other in self.excluded:
            if other in member_of:
                return False
        for target in self.targets:
            if target in member_of:
                return target == room
        return True


class Event(NamedTuple):
    """`k: "e"`: a Socket.IO event for `room` (None: everyone).

    A NamedTuple rather than a frozen dataclass: one is built per bus message on every
    replica, and a tuple is several times cheaper to build.
    """

    name: str  # ev
    data: Any  # d
    room: str | None  # r
    sent_ms: float  # t
    position: str  # o, "<ms>-<seq>" in the room's stream
    ms: int
    seq: int
    scope: Scope | None = None  # rs, x: absent for the common single-room event


class Control(NamedTuple):
    """`k: "join" | "leave" | "kick"` about the sockets of `user`."""

    kind: str  # k
    user: str  # u
    rooms: tuple[tuple[str, Position], ...]  # room -> its position at the join or leave
    sent_ms: float  # t


class RoomControl(NamedTuple):
    """`k: "rjoin" | "rleave" | "rkick"` about the sockets in `room` (None: every socket) that
    are in none of `excluded`: they join or leave `rooms`, or are disconnected."""

    kind: str  # k
    room: str | None  # r
    rooms: tuple[tuple[str, Position], ...]  # rjoin, rleave: room -> its position at that moment
    excluded: frozenset[str]  # x
    sent_ms: float  # t


def encode_scope(targets: Iterable[str], excluded: Iterable[str]) -> bytes:
    """The members `,"rs":[...],"x":[...]` that `Scope` reads, to splice into an envelope (the
    caller has checked the room names); empty when there is nothing to say."""
    rs = sorted(set(targets))
    x = sorted(set(excluded))
    out = b""
    if len(rs) > 1:
        out += b',"rs":' + orjson.dumps(rs)
    if x:
        out += b',"x":' + orjson.dumps(x)
    return out


def encode_event(event: str, data: Any, room: str | None, t_ms: float, scope: bytes = b"") -> bytes:
    """The envelope of an event, without `o`.

    `data` given as bytes is taken as already-encoded JSON (what `events.sanitize` returns)
    and spliced in as is; anything else is encoded here, unchecked. The caller has checked
    the event name and the room: this sits on the producer's hot path.
    """
    if isinstance(data, bytes | bytearray):
        body = bytes(data)
    else:
        try:
            body = orjson.dumps(data)
        except orjson.JSONEncodeError as exc:
            raise EnvelopeError(f"payload is not JSON-serialisable: {exc}") from None
    return b"".join((
        _EVENT_HEAD, orjson.dumps(t_ms),
        b',"ev":', orjson.dumps(event),
        b',"d":', body,
        b',"r":', orjson.dumps(room),
        scope, b"}",
    ))


def encode_control(kind: str, user: str, rooms: dict[str, Position] | None, t_ms: float) -> bytes:
    """The envelope of a control message about `user`: `rooms` maps each room to its position
    at the moment of the join or leave (a replica delivers a joined room's events after it)."""
    if kind not in CONTROL_KINDS:
        raise EnvelopeError(f"unknown control kind {kind!r}; expected join, leave or kick")
    return _with_rooms({"v": VERSION, "k": kind, "t": t_ms, "u": user}, rooms, kick=kind == KIND_KICK)


def encode_room_control(kind: str, room: str | None, rooms: dict[str, Position] | None,
                        excluded: Iterable[str], t_ms: float) -> bytes:
    """The envelope of a control about the sockets in `room` (None: every socket)."""
    if kind not in ROOM_CONTROL_KINDS:
        raise EnvelopeError(f"unknown room control kind {kind!r}; expected rjoin, rleave or rkick")
    message: dict[str, Any] = {"v": VERSION, "k": kind, "t": t_ms, "r": room}
    x = sorted(set(excluded))
    if x:
        message["x"] = x
    return _with_rooms(message, rooms, kick=kind == KIND_ROOM_KICK, what="a room kick")


def _with_rooms(message: dict[str, Any], rooms: dict[str, Position] | None, *, kick: bool,
                what: str = "a kick") -> bytes:
    """A control `message`, encoded with its `rooms` (each room's position), which a join or
    leave needs and a kick (`what`, in the error) does not take."""
    if kick:
        if rooms is not None:
            raise EnvelopeError(f"{what} takes no rooms")
    elif not rooms:
        raise EnvelopeError(f"{message['k']} needs at least one room")
    else:
        message["rooms"] = {room: str(at) for room, at in rooms.items()}
    return orjson.dumps(message)


def _not_json_object(message: bytes) -> EnvelopeError:
    if not message:
        return EnvelopeError("empty message")
    first = message[0]
    if first == 0x93:
        return EnvelopeError(
            "msgpack message (first byte 0x93), as @socket.io/redis-emitter sends: "
            "this bus's envelope is JSON only (run `python -m publisher bridge` for emitters)"
        )
    return EnvelopeError(f"not a JSON object (first byte 0x{first:02x})")


def _show(value: object) -> str:
    # Messages come from the network: never echo an unbounded value into an error (a log).
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_position(text: object) -> Position:
    """Parse `<ms>-<seq>`, a stream entry ID; EnvelopeError if it is not one."""
    if type(text) is not str:
        raise EnvelopeError(f"a position is a string, got {type(text).__name__}")
    match = _POSITION.fullmatch(text)
    if match is None:
        raise EnvelopeError(f"bad position {_show(text)}: expected <ms>-<seq>")
    return Position(int(match[1]), int(match[2]))


def decode(message: bytes) -> Event | Control | RoomControl:
    """Parse a message from a bus channel, or raise EnvelopeError saying what is wrong."""
    if message[:1] != b"{":
        raise _not_json_object(bytes(message[:1]))
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if type(obj) is not dict:
        raise EnvelopeError(f"not a JSON object but {type(obj).__name__}")
    v = obj.get("v")
    if v != VERSION or type(v) is not int:
        raise EnvelopeError(f"unsupported envelope version {_show(v)}, this side speaks {VERSION}")
    t = obj.get("t")
    if type(t) is not float and type(t) is not int:
        raise EnvelopeError(f"'t' must be a number of ms, got {_show(t)}")
    k = obj.get("k")
    if k == KIND_EVENT:
        o: Any = obj.get("o")
        if o is None:
            raise EnvelopeError("no position 'o': only the publish script may put events on the bus")
        at = parse_position(o)
        ev = obj.get("ev")
        if type(ev) is not str or EVENT_NAME_RE.fullmatch(ev) is None or ev in RESERVED_EVENTS:
            raise EnvelopeError(f"'ev' is not an event name: {_show(ev)}")
        if "d" not in obj:
            raise EnvelopeError("event without 'd'")
        r = obj.get("r", False)
        if r is not None and type(r) is not str:
            raise EnvelopeError(f"'r' must be a room name or null, got {_show(r)}")
        if "rs" in obj or "x" in obj:
            return Event(ev, obj["d"], r, t, o, at.ms, at.seq, _scope(obj, r))
        return Event(ev, obj["d"], r, t, o, at.ms, at.seq)
    if type(k) is str and k in CONTROL_KINDS:
        return _control(obj, k, t)
    if type(k) is str and k in ROOM_CONTROL_KINDS:
        return _room_control(obj, k, t)
    raise EnvelopeError(f"unknown kind {_show(k)}")


def _control(obj: dict[str, Any], k: str, t: float) -> Control:
    """A control message whose user id and rooms are in the room grammar, or EnvelopeError.

    Checked here, once, because a replica builds names from them (`user:<u>`, channels):
    a user id of 300 characters must be refused as a bad message, not raise later in the
    middle of the bus listener. Control messages are rare; events are not checked so.
    """
    u = obj.get("u")
    if type(u) is not str or not u:
        raise EnvelopeError(f"'u' must be a user id string, got {_show(u)}")
    try:
        user_room(u)
    except ValueError as exc:  # InvalidRoom included
        raise EnvelopeError(f"'u' is not a user id: {exc}") from None
    if k == KIND_KICK:
        return Control(k, u, (), t)
    rooms = obj.get("rooms")
    if type(rooms) is not dict or not rooms:
        raise EnvelopeError(f"{k}: 'rooms' must be a non-empty object of room -> position, got {_show(rooms)}")
    out = []
    for room, at in rooms.items():
        try:
            parse_room(room)
        except InvalidRoom as exc:
            raise EnvelopeError(f"{k}: 'rooms' holds a name that is not a room: {exc}") from None
        out.append((room, parse_position(at)))
    return Control(k, u, tuple(out), t)


def _room_list(obj: dict[str, Any], key: str) -> list[str]:
    value = obj.get(key, [])
    if type(value) is not list or len(value) > MAX_SCOPE_ROOMS:
        raise EnvelopeError(f"{key!r} must be a list of at most {MAX_SCOPE_ROOMS} room names, got {_show(value)}")
    for room in value:
        _check_room(key, room)
    return value


def _check_room(what: str, room: object) -> None:
    if type(room) is not str:
        raise EnvelopeError(f"{what!r} holds a name that is not a string: {_show(room)}")
    try:
        parse_room(room)
    except InvalidRoom as exc:
        raise EnvelopeError(f"{what!r} holds a name that is not a room: {exc}") from None


def _scope(obj: dict[str, Any], r: str | None) -> Scope:
    """`rs` and `x` of an event, checked: its own room must be among its targets."""
    targets = _room_list(obj, "rs")
    if targets and r not in targets:
        raise EnvelopeError(f"'r' {_show(r)} is not among the event's target rooms 'rs'")
    return Scope(tuple(targets), frozenset(_room_list(obj, "x")))


def _room_control(obj: dict[str, Any], k: str, t: float) -> RoomControl:
    r = obj.get("r")
    if r is not None:
        _check_room("r", r)
    excluded = frozenset(_room_list(obj, "x"))
    if k == KIND_ROOM_KICK:
        return RoomControl(k, r, (), excluded, t)
    rooms = obj.get("rooms")
    if type(rooms) is not dict or not rooms:
        raise EnvelopeError(f"{k}: 'rooms' must be a non-empty object of room -> position, got {_show(rooms)}")
    out = []
    for room, at in rooms.items():
        _check_room("rooms", room)
        out.append((room, parse_position(at)))
    return RoomControl(k, r, tuple(out), excluded, t)
