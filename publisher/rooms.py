"""Room names: the grammar of docs/wire-protocol.md ("Names"), as pure functions.

A room name is also part of a Redis channel and key name, so anything outside the grammar is
refused here rather than escaped later: `user:<id>`, `classroom:<id>`, `teacher:<id>`,
`admin:all`, where `<id>` is 1 to 256 characters, none of them a control character.
That admits every user id identity providers issue (`auth0|5f7c...`, `google-oauth2|1234`,
`jane+tag@example.com`): the contract takes any non-empty string as a user id. The gateway
imports this module for its own room policy, so producer and gateway cannot disagree.
"""

from __future__ import annotations

import re
from typing import Final

ROOM_KINDS: Final = ("user", "classroom", "teacher", "admin")
ADMIN_ROOM: Final = "admin:all"
MAX_ID_LENGTH: Final = 256

_BAD_ID_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRoom(ValueError):
    """A room name outside the grammar; the message says which part is wrong."""


def _check_id(kind: str, room_id: str) -> None:
    """Raise InvalidRoom naming the first problem with `room_id`."""
    if room_id and len(room_id) <= MAX_ID_LENGTH and _BAD_ID_CHAR.search(room_id) is None:
        return
    if not room_id:
        raise InvalidRoom(f"{kind} room needs an id after '{kind}:'")
    if len(room_id) > MAX_ID_LENGTH:
        raise InvalidRoom(
            f"{kind} room id is {len(room_id)} characters, the limit is {MAX_ID_LENGTH}"
        )
    bad = _BAD_ID_CHAR.search(room_id)
    char = bad.group() if bad else "?"
    raise InvalidRoom(
        f"{kind} room id {room_id!r} has the character {char!r}; "
        "ids have no control characters"
    )


def parse_room(name: object) -> tuple[str, str]:
    """Split a room name into (kind, id), or raise InvalidRoom saying what is wrong.

    `admin:all` gives ("admin", "all"); no other admin room exists.
    """
    if not isinstance(name, str):
        raise InvalidRoom(f"a room name is a string, got {type(name).__name__}")
    kind, sep, room_id = name.partition(":")
    if not sep:
        raise InvalidRoom(
            f"{name!r} is not a room: write kind:id with kind one of {', '.join(ROOM_KINDS)}"
        )
    if kind == "admin":
        if room_id != "all":
            raise InvalidRoom(f"{name!r} is not a room: the only admin room is {ADMIN_ROOM!r}")
        return kind, room_id
    if kind not in ROOM_KINDS:
        raise InvalidRoom(
            f"{name!r} is not a room: unknown kind {kind!r}, "
            f"expected one of {', '.join(ROOM_KINDS)}"
        )
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
