"""The client's offset: a socket's position in each of its rooms, as one opaque string.

Positions are per room (a stream entry ID, `<ms>-<seq>`, see docs/wire-protocol.md), and
socket.io-client keeps one offset: the last argument of the last event it processed. So the
offset of every event is the socket's whole vector, one component per room in which the socket
received something since its session began: `<h>:<ms36>.<seq36>`, comma-separated, where `<h>`
names the room by 6 characters of its BLAKE2b digest (a room name may be 300 characters) and
the ID's parts are in base 36. Rooms without a component replay from where the session entered
them (`starts` in the session record).

Components are bytes kept per socket (`Conn.components`), so that a fan-out builds only the
part that changes: the event's own room.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache

from publisher.envelope import Position

# ms and seq of a stream entry ID, and the one number they order by
SEQ_SPAN = 10**12
EMPTY_SEQ = 2**64 - 1  # "<ms>-<EMPTY_SEQ>": the stream was empty (or did not exist) at <ms>
MAX_COMPONENTS = 256
_COMPONENT = re.compile(rb"([A-Za-z0-9_-]{6}):([0-9a-z]{1,11})\.([0-9a-z]{1,13})")


class OffsetError(ValueError):
    """An offset a client sent back that is not one of ours; the session starts fresh."""


def key_of(ms: int, seq: int) -> int:
    """The order of entries within a room, as one integer."""
    return ms * SEQ_SPAN + min(seq, SEQ_SPAN - 1)


def position_of(key: int) -> Position:
    """The stream position a key stands for (the inverse of `key_of`)."""
    ms, seq = divmod(key, SEQ_SPAN)
    return Position(ms, EMPTY_SEQ if seq == SEQ_SPAN - 1 else seq)


@lru_cache(maxsize=65536)
def room_hash(room: str) -> bytes:
    """6 URL-safe characters naming `room` in an offset."""
    digest = hashlib.blake2b(room.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest)[:6]


@lru_cache(maxsize=4096)
def _b36(n: int) -> bytes:
    """Cached: every event of one millisecond shares its `ms`, and `seq` is nearly always small,
    so a delivery's offset component costs a dict lookup instead of a Python loop of divmods
    (3.5 % of a targeted delivery's profile, docs/performance.md)."""
    if n == 0:
        return b"0"
    out = bytearray()
    while n:
        n, r = divmod(n, 36)
        out.append(b"0123456789abcdefghijklmnopqrstuvwxyz"[r])
    out.reverse()
    return bytes(out)


def component(room: str, ms: int, seq: int) -> bytes:
    return room_hash(room) + b":" + _b36(ms) + b"." + _b36(seq)


def decode(offset: object, rooms: Iterable[str]) -> dict[str, tuple[int, int]]:
    """The positions an offset gives for the session's `rooms`: room → (ms, seq).

    OffsetError when the offset is not ours, or two of the session's rooms share a digest (then
    no component can be trusted). A component of a room the session no longer knows (left long
    ago) is ignored: only the session's rooms are replayed."""
    if not isinstance(offset, str) or len(offset) > MAX_COMPONENTS * 32:
        raise OffsetError("the offset is not a string of ours")
    if not offset:
        return {}
    by_hash: dict[bytes, str] = {}
    for room in rooms:
        h = room_hash(room)
        if by_hash.setdefault(h, room) != room:
            raise OffsetError("two rooms of the session share a digest")
    out: dict[str, tuple[int, int]] = {}
    for part in offset.encode().split(b","):
        match = _COMPONENT.fullmatch(part)
        if match is None:
            raise OffsetError(f"bad offset component {part[:40]!r}")
        known = by_hash.get(match[1])
        if known is not None:
            out[known] = (int(match[2], 36), int(match[3], 36))
    return out
