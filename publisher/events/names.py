"""Event names: which may be emitted to clients (a short grammar, and none Socket.IO reserves).

Apart from the payload checks: a name is checked on its own too, with the same grammar, when
`publisher.envelope` reads an envelope off the bus.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["EVENT_NAME_RE", "RESERVED_EVENTS", "InvalidEvent", "check_event_name"]

EVENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class InvalidEvent(ValueError):
    """An event name outside the grammar, or one Socket.IO reserves."""


def check_event_name(name: object) -> str:
    """Return `name` if it may be emitted to clients, else raise InvalidEvent saying why."""
    if not isinstance(name, str):
        raise InvalidEvent(f"an event name is a string, got {type(name).__name__}")
    if name in RESERVED_EVENTS:
        raise InvalidEvent(f"{name!r} is reserved by Socket.IO and cannot be emitted")
    if EVENT_NAME_RE.fullmatch(name) is None:
        raise InvalidEvent(
            f"{name[:80]!r} is not an event name: 1 to 64 characters among A-Z a-z 0-9 _ : . -"
        )
    return name
