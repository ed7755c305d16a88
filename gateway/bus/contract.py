"""What the delivery core needs from a bus, whichever it is (Redis, or in-process for one replica).

Both implementations keep the same promises (docs/wire-protocol.md), so everything above them
(delivery, recovery, the API) is written once: every event gets a position in its room's stream;
a room's messages reach the sink in that order; a room's history answers "the events after this
position, up to that one", or says it cannot (`None`) when part of it may be gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from publisher.envelope import Position
from publisher.session import SessionRecord


class BusUnavailable(ConnectionError):
    """The bus cannot take or serve this request now; nothing was published."""


# (room, replay after this position, up to this one inclusive or None for no end)
Span = tuple[str, Position, Position | None]
# A room's stored events, in order: (position, the envelope as published, without its position)
Entries = list[tuple[Position, bytes]]


class BusSink(Protocol):
    """The delivery core, as the bus sees it."""

    def on_message(self, raw: bytes) -> None: ...

    def begin_batch(self) -> None:
        """A read of messages from the bus begins: their writes leave together at its end."""

    def end_batch(self) -> None: ...

    def channels_lost(self, rooms: Sequence[str]) -> None:
        """These rooms' channels are down (or moving between shards): messages may be missed."""

    def channels_restoring(self, rooms: Sequence[str]) -> None:
        """They are being subscribed again: hold their sockets' live events."""

    async def channels_restored(self, rooms: Sequence[str]) -> None:
        """Confirmed again: catch up on what was published meanwhile."""

    def heartbeat_snapshot(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(users online here, (pid, user) of the sessions connected here)."""
        ...


class Backend(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    async def start(self, sink: BusSink) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room: str) -> bool: ...

    def unsubscribe(self, room: str) -> None: ...

    async def publish_event(self, event: str, data: Any, room: str | None) -> str: ...

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        """Each room's position now (its newest entry, or "empty at now"). BusUnavailable."""
        ...

    async def history(self, spans: Sequence[Span]) -> dict[str, Entries | None]:
        """Each span's room's events after its start (up to its end, when it has one), or None
        for a room whose replay could be short. BusUnavailable."""
        ...

    def save_session(self, pid: str, record: SessionRecord) -> None: ...

    async def load_session(self, user: str, pid: str) -> tuple[SessionRecord, int] | None:
        """The session and when its user was last revoked (ms, 0: never); None when there is
        none. Raises SessionError when it does not parse."""
        ...

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        """The client went away at `t_ms` and may come back: keep the session for the window."""

    def drop_session(self, pid: str, user: str) -> None:
        """The client left for good (its own disconnect): forget the session now."""

    def session_rooms(self, pid: str, user: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        """`room` joined (`change` "j") or left ("l") at position `at` ("" when unknown)."""
        ...

    def set_online(self, user: str, online: bool) -> None: ...
