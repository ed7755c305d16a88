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
    "start": "o",  # the bus offset the session started at (a client that received nothing)
    "created": "c",  # ms, creation: a revocation after it voids the session
    "alive": "t",  # ms, when its client was last known connected
    "joined": "j",  # JSON object: room -> stream id where it was joined after `start`
    "left": "l",  # JSON object: room -> stream id where it was left after `start`
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


def _positions(raw: str | None, what: str) -> dict[str, str]:
    try:
        table = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        raise SessionError(f"{what} is not JSON") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SessionError(f"{what} is not an object of stream ids")
    return table


@dataclass(frozen=True, slots=True)
class SessionRecord:
    sid: str
    user: str
    rooms: tuple[str, ...]
    start: str
    created_ms: int
    alive_ms: int
    joined: Mapping[str, str] = field(default_factory=dict)
    left: Mapping[str, str] = field(default_factory=dict)

    def to_hash(self) -> dict[str, str]:
        return {
            FIELDS["sid"]: self.sid,
            FIELDS["user"]: self.user,
            FIELDS["rooms"]: orjson.dumps(list(self.rooms)).decode(),
            FIELDS["start"]: self.start,
            FIELDS["created"]: str(self.created_ms),
            FIELDS["alive"]: str(self.alive_ms),
            FIELDS["joined"]: orjson.dumps(dict(self.joined)).decode(),
            FIELDS["left"]: orjson.dumps(dict(self.left)).decode(),
        }

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> SessionRecord:
        """Parse a stored hash; SessionError saying what is wrong (it came from Redis, where
        anyone with access may have written it)."""
        try:
            rooms = orjson.loads(fields.get(FIELDS["rooms"], "[]"))
        except orjson.JSONDecodeError:
            raise SessionError("rooms is not JSON") from None
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise SessionError("rooms is not a list of room names")
        sid = fields.get(FIELDS["sid"], "")
        user = fields.get(FIELDS["user"], "")
        if not sid or not user:
            raise SessionError("no sid or user")
        try:
            created = int(fields.get(FIELDS["created"]) or 0)
            alive = int(fields.get(FIELDS["alive"]) or 0)
        except ValueError:
            raise SessionError("created or alive is not a number of ms") from None
        return cls(sid, user, tuple(rooms), fields.get(FIELDS["start"], ""), created, alive,
                   _positions(fields.get(FIELDS["joined"]), "joined"),
                   _positions(fields.get(FIELDS["left"]), "left"))
