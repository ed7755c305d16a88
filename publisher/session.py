"""The recoverable session record: the one definition of its fields.

A session is a Redis hash written by the gateway (on connect, on room changes, when the client
goes away) and by producers (`join`/`leave` edit the rooms of every session of a user), and read
on recovery. Python reads and writes it through `SessionRecord`; the Lua scripts name its fields
as `{{field.<name>}}`, replaced from `FIELDS` when a script is loaded (`publisher.scripts`), so
no hash field name is spelled anywhere else. Field names are short on the wire (every session
holds them), long here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import orjson

FIELDS: Final[Mapping[str, str]] = MappingProxyType({
    "sid": "sid",  # the Socket.IO sid, given back on recovery
    "user": "user",  # whose session it is: recovered only for that user
    "rooms": "rooms",  # JSON list of the rooms it is in
    "starts": "p",  # JSON object: room -> its position when the socket entered it
    "left": "l",  # JSON object: room -> position of a leave after the session began
    "extra": "x",  # JSON list: rooms entered through a producer or the API, not the token
    "created": "c",  # ms, creation: a revocation after it voids the session
    "alive": "t",  # ms, when its client was last known connected
})
_PLACEHOLDER = re.compile(rb"\{\{field\.([a-z_]+)\}\}")


class SessionError(ValueError):
    """A stored session that does not parse; it is not recovered."""


def render_fields(source: bytes, script: str) -> bytes:
    """`source` with every `{{field.<name>}}` replaced by the hash field it names."""

    def one(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode()
        if name not in FIELDS:
            raise ValueError(f"{script}: {{{{field.{name}}}}} is not a session field ({', '.join(FIELDS)})")
        return FIELDS[name].encode()

    return _PLACEHOLDER.sub(one, source)


def _json(raw: str | None, kind: type, what: str) -> object:
    try:
        value = orjson.loads(raw) if raw else kind()
    except orjson.JSONDecodeError:
        raise SessionError(f"{what} is not JSON") from None
    if not isinstance(value, kind):
        raise SessionError(f"{what} is not a JSON {kind.__name__}")
    return value


def _positions(raw: str | None, what: str) -> dict[str, str]:
    table = _json(raw, dict, what)
    assert isinstance(table, dict)
    if not all(isinstance(v, str) for v in table.values()):
        raise SessionError(f"{what} is not an object of stream positions")
    return table


def _rooms(raw: str | None, what: str) -> tuple[str, ...]:
    rooms = _json(raw, list, what)
    assert isinstance(rooms, list)
    if not all(isinstance(r, str) for r in rooms):
        raise SessionError(f"{what} is not a list of room names")
    return tuple(rooms)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    sid: str
    user: str
    rooms: tuple[str, ...]
    starts: Mapping[str, str]
    created_ms: int
    alive_ms: int
    left: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()

    def to_hash(self) -> dict[str, str]:
        return {
            FIELDS["sid"]: self.sid,
            FIELDS["user"]: self.user,
            FIELDS["rooms"]: orjson.dumps(list(self.rooms)).decode(),
            FIELDS["starts"]: orjson.dumps(dict(self.starts)).decode(),
            FIELDS["left"]: orjson.dumps(dict(self.left)).decode(),
            FIELDS["extra"]: orjson.dumps(list(self.extra)).decode(),
            FIELDS["created"]: str(self.created_ms),
            FIELDS["alive"]: str(self.alive_ms),
        }

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> SessionRecord:
        """Parse a stored hash; SessionError saying what is wrong (it came from Redis, where
        anyone with access may have written it)."""
        sid = fields.get(FIELDS["sid"], "")
        user = fields.get(FIELDS["user"], "")
        if not sid or not user:
            raise SessionError("no sid or user")
        try:
            created = int(fields.get(FIELDS["created"]) or 0)
            alive = int(fields.get(FIELDS["alive"]) or 0)
        except ValueError:
            raise SessionError("created or alive is not a number of ms") from None
        return cls(sid, user, _rooms(fields.get(FIELDS["rooms"]), "rooms"),
                   _positions(fields.get(FIELDS["starts"]), "starts"), created, alive,
                   _positions(fields.get(FIELDS["left"]), "left"), _rooms(fields.get(FIELDS["extra"]), "extra"))
