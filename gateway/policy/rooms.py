"""Who may be in which room: pure functions, the only door into a room.

The room grammar (names, ids) is `publisher.rooms`, shared with producers; this module is the
policy. A socket's rooms are derived from its verified token; the only other way in is a
producer's `join`, which may add classrooms (a student enrolled after logging in) and any room
outside the reserved prefixes (`quiz:9`), never another user's room, a teacher room the token
does not grant, or `admin:all`. Clients themselves choose no room.
"""

from __future__ import annotations

from dataclasses import dataclass

from publisher.rooms import (
    ADMIN_ROOM,
    InvalidRoom,
    classroom_room,
    parse_room,
    teacher_room,
    user_room,
)

ROLES = ("student", "teacher", "admin")


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified user: what the token says, reduced to what routing needs."""

    user_id: str
    role: str = "student"
    classrooms: tuple[str, ...] = ()
    exp: float | None = None


def rooms_for(identity: Identity) -> list[str]:
    """The rooms a socket of this identity is in from its first moment, in a stable order."""
    rooms = [user_room(identity.user_id)]
    if identity.role == "teacher":
        rooms.append(teacher_room(identity.user_id))
    elif identity.role == "admin":
        rooms.append(ADMIN_ROOM)
    rooms.extend(classroom_room(c) for c in identity.classrooms)
    return rooms


def may_join(identity: Identity, room: str) -> bool:
    """May a producer (or the gateway API) put a socket of `identity` into `room`?

    Its own rooms, yes; any classroom and any room outside the reserved prefixes (`quiz:9`),
    yes (enrolment and grouping are the producers' business); another user's room, a teacher
    room without the teacher role or of someone else, or admin:all without the admin role,
    never. A name outside the grammar, never.
    """
    try:
        kind, ident = parse_room(room)
    except InvalidRoom:
        return False
    if kind == "user":
        return ident == identity.user_id
    if kind == "teacher":
        return identity.role == "teacher" and ident == identity.user_id
    if kind == "admin":
        return identity.role == "admin"
    return True  # classroom:<id> or a room of no reserved kind


def may_leave(identity: Identity, room: str) -> bool:
    """Every room but the socket's own user room can be left."""
    return room != user_room(identity.user_id)
