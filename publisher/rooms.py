"""Room names: the grammar of docs/wire-protocol.md ("Names"), as pure functions.

A room name is 1 to 300 characters, none of them a control character (U+0000 to U+001F,
U+007F to U+009F), a lone surrogate (it could not be written to Redis as UTF-8) or a brace (`{`,
`}`: every bus name of a room carries the room as its Redis Cluster hash tag), and not `*` (the
bus's name for "everyone"). Producers
may name rooms as they like (`quiz:9`, `lobby`, `school 12`): the contract's `join(user, room)`
and `joinRoom(room)` take any room, and only clients may not choose theirs.

Four prefixes are reserved, because the gateway's room policy gives them a meaning:
`user:<id>`, `classroom:<id>`, `teacher:<id>`, where `<id>` is 1 to 256 characters under the
same character rule, and `admin:all`, the only `admin:` room. That admits every user id
identity providers issue (`auth0|5f7c...`, `google-oauth2|1234`, `jane+tag@example.com`): the
contract takes any non-empty string as a user id. A prefix is reserved only as written, in
lower case: `Quiz:9` and `User:1` are ordinary rooms, and `user:1` is the only room of user 1.

A room name is also part of a Redis channel and key name; what is outside the grammar is
refused here rather than escaped later. The gateway imports this module for its own room
policy, so producer and gateway cannot disagree.
"""

from __future__ import annotations

import re
from typing import Final

ROOM_KINDS: Final = ("user", "classroom", "teacher", "admin")
ADMIN_ROOM: Final = "admin:all"
MAX_ID_LENGTH: Final = 256
MAX_ROOM_LENGTH: Final = 300
OTHER: Final = ""  # the kind `parse_room` gives a room outside the reserved prefixes

_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff{}]")
EVERYONE: Final = "*"  # publisher.envelope.EVERYONE: the room of events for everyone


class InvalidRoom(ValueError):
    """A room name outside the grammar; the message says which part is wrong."""


def _show(text: str) -> str:
    # Room names come from producers and from the bus: never echo an unbounded value.
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _bad_char(what: str, text: str) -> InvalidRoom | None:
    bad = _BAD_CHAR.search(text)
    if bad is None:
        return None
    why = ("braces are Redis Cluster hash tags on the bus" if bad.group() in "{}"
           else "room names have no control characters")
    return InvalidRoom(f"{what} {_show(text)} has the character {bad.group()!r}; {why}")


def _check_id(kind: str, room_id: str) -> None:
    """Raise InvalidRoom naming the first problem with `room_id`."""
    if not room_id:
        raise InvalidRoom(f"{kind} room needs an id after '{kind}:'")
    if len(room_id) > MAX_ID_LENGTH:
        raise InvalidRoom(
            f"{kind} room id is {len(room_id)} characters, the limit is {MAX_ID_LENGTH}"
        )
    problem = _bad_char(f"{kind} room id", room_id)
    if problem is not None:
        raise problem


def parse_room(name: object) -> tuple[str, str]:
    """Split a room name into (kind, id), or raise InvalidRoom saying what is wrong.

    The kind is one of `ROOM_KINDS` for a reserved prefix (`admin:all` gives ("admin",
    "all")), else `OTHER` (the empty string) with the whole name as the id: `quiz:9` gives
    ("", "quiz:9").
    """
    if not isinstance(name, str):
        raise InvalidRoom(f"a room name is a string, got {type(name).__name__}")
    if not name:
        raise InvalidRoom(f"a room name has 1 to {MAX_ROOM_LENGTH} characters, got ''")
    if len(name) > MAX_ROOM_LENGTH:
        raise InvalidRoom(
            f"a room name is {len(name)} characters, the limit is {MAX_ROOM_LENGTH}"
        )
    kind, sep, room_id = name.partition(":")
    if not sep or kind not in ROOM_KINDS:
        if name == EVERYONE:
            raise InvalidRoom("'*' is not a room: the bus's name for everyone (emit with broadcast=True)")
        problem = _bad_char("room name", name)
        if problem is not None:
            raise problem
        return OTHER, name
    if kind == "admin":
        if room_id != "all":
            raise InvalidRoom(
                f"{_show(name)} is not a room: the only admin room is {ADMIN_ROOM!r}"
            )
        return kind, room_id
    _check_id(kind, room_id)
    return kind, room_id


def check_room(name: str) -> str:
    """Return `name` unchanged if it is a room, else raise InvalidRoom."""
    parse_room(name)
    return name


def normalize_user_id(value: object) -> str:
    """The user id as the string every name is built from.

    An integer is taken as its decimal string, as the gateway does with a token's `sub`, so
    `user=42` and `user="42"` reach the same sockets. bool and float are refused: `True` or
    `42.0` as a user id is a bug upstream, not an id.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"a user id is a non-empty string or an integer, got {type(value).__name__}"
        )
    text = str(value)
    if not text:
        raise ValueError("a user id is a non-empty string or an integer, got ''")
    return text


def _room(kind: str, value: object) -> str:
    room_id = normalize_user_id(value) if kind == "user" else _id_text(kind, value)
    _check_id(kind, room_id)
    return f"{kind}:{room_id}"


def _id_text(kind: str, value: object) -> str:
    # Classroom and teacher ids come from tokens as strings or numbers, like user ids.
    try:
        return normalize_user_id(value)
    except ValueError:
        raise InvalidRoom(
            f"a {kind} id is a non-empty string or an integer, got {value!r}"
        ) from None


def user_room(user_id: object) -> str:
    """`user:<id>`; raises ValueError for a non-id, InvalidRoom for an id outside the grammar."""
    return _room("user", user_id)


def classroom_room(classroom_id: object) -> str:
    """`classroom:<id>`; raises InvalidRoom for an id outside the grammar."""
    return _room("classroom", classroom_id)


def teacher_room(teacher_id: object) -> str:
    """`teacher:<id>`; raises InvalidRoom for an id outside the grammar."""
    return _room("teacher", teacher_id)
