"""The bus wire format, version 1: the one definition that producers and the gateway import.

docs/wire-protocol.md is the spec; this module is its executable form. Names (channels and
keys) come from `BusNames`, so a prefix change cannot reach one side only. Encoding is for
producers and leaves the offset `o` out: only the publish script may assign it. Decoding runs
on the gateway for every message of every room, so it does one `orjson.loads` and only the
checks without which a replica would misroute or crash; anything else it refuses with
`EnvelopeError`, never another exception, because the input comes from the network.

Offsets are `<epoch>:<ms>-<seq>`. The epoch is 1 to 64 characters among `A-Z a-z 0-9 _ -`
(the script's candidate is 16 hex digits); `<ms>-<seq>` is also the history stream entry ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from publisher.events import EVENT_NAME_RE, RESERVED_EVENTS
from publisher.rooms import InvalidRoom, parse_room, user_room

VERSION: Final = 1
NAMESPACE: Final = "/notifications"
DEFAULT_CHANNEL_PREFIX: Final = "socket.io"
DEFAULT_KEY_PREFIX: Final = "ngw"

KIND_EVENT: Final = "e"
KIND_JOIN: Final = "join"
KIND_LEAVE: Final = "leave"
KIND_KICK: Final = "kick"
CONTROL_KINDS: Final = frozenset({KIND_JOIN, KIND_LEAVE, KIND_KICK})

# Presence (docs: "Presence"): a replica heartbeats every 5 s and counts as alive for 15 s.
REPLICA_HEARTBEAT_MS: Final = 5_000
REPLICA_TTL_MS: Final = 15_000

_OFFSET = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,15})-([0-9]{1,19})", re.ASCII)
_EVENT_HEAD: Final = b'{"v":%d,"k":"e","t":' % VERSION


class EnvelopeError(ValueError):
    """A bus message that is not a valid v1 envelope; the message says why."""


@dataclass(frozen=True, slots=True)
class BusNames:
    """Every channel and key name of the bus, from the two prefixes.

    Frozen so that one object can be shared by a publisher and its batches without anyone
    re-pointing it halfway.
    """

    channel_prefix: str = DEFAULT_CHANNEL_PREFIX
    key_prefix: str = DEFAULT_KEY_PREFIX

    def __post_init__(self) -> None:
        # `#` separates the parts of a channel name: a prefix containing it would collide.
        if not isinstance(self.channel_prefix, str) or not self.channel_prefix:
            raise ValueError("channel_prefix must be a non-empty string, e.g. 'socket.io'")
        if "#" in self.channel_prefix:
            raise ValueError(f"channel_prefix {self.channel_prefix!r} must not contain '#'")
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ValueError("key_prefix must be a non-empty string, e.g. 'ngw'")

    def room_channel(self, room: str) -> str:
        return f"{self.channel_prefix}#{NAMESPACE}#{room}#"

    def broadcast_channel(self) -> str:
        return f"{self.channel_prefix}#{NAMESPACE}#"

    def clock_key(self) -> str:
        return f"{self.key_prefix}:clock"

    def history_key(self, room: str) -> str:
        return f"{self.key_prefix}:h:{room}"

    def broadcast_history_key(self) -> str:
        """The history of events for everyone (not a room: no room key can be named so)."""
        return f"{self.key_prefix}:hb"

    def session_key(self, pid: str) -> str:
        return f"{self.key_prefix}:s:{pid}"

    def user_sessions_key(self, user: str) -> str:
        """A sorted set: pid -> ms when that session expires (trimmed as sessions end)."""
        return f"{self.key_prefix}:sessions:{user}"

    def revoked_key(self, user: str) -> str:
        return f"{self.key_prefix}:revoked:{user}"

    def replicas_key(self) -> str:
        return f"{self.key_prefix}:replicas"

    def online_key(self, replica: str) -> str:
        return f"{self.key_prefix}:online:{replica}"


@dataclass(frozen=True, slots=True)
class Offset:
    """A position on the bus. Comparable only within one epoch, where `seq` alone orders."""

    epoch: str
    ms: int
    seq: int

    @property
    def stream_id(self) -> str:
        """The ID of the message's entry in its room's history stream."""
        return f"{self.ms}-{self.seq}"

    def __str__(self) -> str:
        return f"{self.epoch}:{self.ms}-{self.seq}"


class Event(NamedTuple):
    """`k: "e"`: a Socket.IO event for room `r` (None: everyone).

    A NamedTuple rather than a frozen dataclass: one is built per bus message on every
    replica, and a tuple is several times cheaper to build.
    """

    ev: str
    d: Any
    r: str | None
    t: float
    o: str
    epoch: str
    ms: int
    seq: int


class Control(NamedTuple):
    """`k: "join" | "leave" | "kick"` about the sockets of user `u`."""

    k: str
    u: str
    rooms: tuple[str, ...]
    t: float
    o: str
    epoch: str
    ms: int
    seq: int


def encode_event(event: str, data: Any, room: str | None, t_ms: float) -> bytes:
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
        b"}",
    ))


def encode_control(kind: str, user: str, rooms: list[str] | tuple[str, ...] | None,
                   t_ms: float) -> bytes:
    """The envelope of a control message about `user`, without `o`."""
    if kind not in CONTROL_KINDS:
        raise EnvelopeError(f"unknown control kind {kind!r}; expected join, leave or kick")
    message: dict[str, Any] = {"v": VERSION, "k": kind, "t": t_ms, "u": user}
    if kind == KIND_KICK:
        if rooms is not None:
            raise EnvelopeError("a kick takes no rooms")
    elif not rooms:
        raise EnvelopeError(f"{kind} needs at least one room")
    else:
        message["rooms"] = list(rooms)
    return orjson.dumps(message)


def _not_json_object(message: bytes) -> EnvelopeError:
    if not message:
        return EnvelopeError("empty message")
    first = message[0]
    if first == 0x93:
        return EnvelopeError(
            "msgpack message (first byte 0x93), as @socket.io/redis-emitter sends: "
            "envelope v1 is JSON only"
        )
    return EnvelopeError(f"not a JSON object (first byte 0x{first:02x})")


def _show(value: object) -> str:
    # Messages come from the network: never echo an unbounded value into an error (a log).
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _offset_parts(text: object) -> tuple[str, int, int]:
    if type(text) is not str:
        raise EnvelopeError(f"an offset is a string, got {type(text).__name__}")
    match = _OFFSET.fullmatch(text)
    if match is None:
        raise EnvelopeError(f"bad offset {_show(text)}: expected <epoch>:<ms>-<seq>")
    return match[1], int(match[2]), int(match[3])


def parse_offset(text: object) -> Offset:
    """Parse `<epoch>:<ms>-<seq>`; offsets also arrive from clients, so nothing is trusted."""
    return Offset(*_offset_parts(text))


def decode(message: bytes) -> Event | Control:
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
    o: Any = obj.get("o")
    if o is None:
        raise EnvelopeError("no offset 'o': only the publish script may put messages on the bus")
    epoch, ms, seq = _offset_parts(o)
    k = obj.get("k")
    if k == KIND_EVENT:
        ev = obj.get("ev")
        if type(ev) is not str or EVENT_NAME_RE.fullmatch(ev) is None or ev in RESERVED_EVENTS:
            raise EnvelopeError(f"'ev' is not an event name: {_show(ev)}")
        if "d" not in obj:
            raise EnvelopeError("event without 'd'")
        r = obj.get("r", False)
        if r is not None and type(r) is not str:
            raise EnvelopeError(f"'r' must be a room name or null, got {_show(r)}")
        return Event(ev, obj["d"], r, t, o, epoch, ms, seq)
    if type(k) is str and k in CONTROL_KINDS:
        return _control(obj, k, t, o, epoch, ms, seq)
    raise EnvelopeError(f"unknown kind {_show(k)}")


def _control(obj: dict[str, Any], k: str, t: float, o: str, epoch: str, ms: int, seq: int) -> Control:
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
    rooms: Any = ()
    if k != KIND_KICK:
        rooms = obj.get("rooms")
        if type(rooms) is not list or not rooms or not all(type(x) is str for x in rooms):
            raise EnvelopeError(f"{k}: 'rooms' must be a non-empty list of room names, got {_show(rooms)}")
        for room in rooms:
            try:
                parse_room(room)
            except InvalidRoom as exc:
                raise EnvelopeError(f"{k}: 'rooms' holds a name that is not a room: {exc}") from None
    return Control(k, u, tuple(rooms), t, o, epoch, ms, seq)
