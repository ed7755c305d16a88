"""What the delivery core needs from a bus, whichever it is (Redis, or in-process for one replica).

Both implementations keep the same promises, so everything above them (delivery, recovery,
the API) is written once: every message gets a position `(epoch, ms, seq)` with `seq` growing
across all rooms; messages reach the sink in `seq` order; a room's history answers "the events
after this position", or says it cannot (`None`) when part of it is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from publisher.session import SessionRecord


class BusUnavailable(ConnectionError):
    """The bus cannot take or serve this request now; nothing was published."""


SEQ_SPAN = 10**12


def order_key(ms: int, seq: int) -> int:
    """The order of bus messages as one integer: by `ms`, then `seq`.

    `seq` alone orders messages within an epoch, unless Redis lost its last writes but kept
    the clock (asynchronous replication in a failover, `appendfsync everysec` after a crash):
    then `seq` values are handed out again. `ms` comes from Redis's clock, which went on, so
    the pair still puts the new messages after the old ones.
    """
    return ms * SEQ_SPAN + seq


@dataclass(frozen=True, slots=True)
class Position:
    epoch: str
    ms: int
    seq: int

    @property
    def key(self) -> int:
        return order_key(self.ms, self.seq)

    @property
    def offset(self) -> str:
        return f"{self.epoch}:{self.ms}-{self.seq}"

    @property
    def stream_id(self) -> str:
        return f"{self.ms}-{self.seq}"


# (room, replay after this position, up to this one or None for no end)
Span = tuple[str, Position, Position | None]
# The room name that stands, in a Span, for the history of events sent to everyone.
EVERYONE = ""


class BusSink(Protocol):
    """The delivery core, as the bus sees it."""

    def on_message(self, raw: bytes) -> None: ...

    async def on_bus_up(self) -> None:
        """Connected again, channels not yet resubscribed: hold live delivery."""

    async def on_bus_resubscribed(self) -> None:
        """Every channel confirmed: catch up on what was published while away."""

    def on_bus_down(self) -> None: ...

    def heartbeat_snapshot(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(users online here, (pid, user) of the sessions connected here)."""
        ...

    def begin_batch(self) -> None:
        """A read of messages from the bus begins: their writes leave together at its end."""

    def end_batch(self) -> None: ...


class Backend(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    async def start(self, sink: BusSink) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, room: str) -> bool: ...

    def unsubscribe(self, room: str) -> None: ...

    async def publish_event(self, event: str, data: Any, room: str | None) -> str: ...

    async def position(self) -> Position: ...

    async def history(self, spans: Sequence[Span]) -> list[bytes] | None:
        """Each room's events after its own start (up to its end, when it has one), merged in
        order; None when any of them is incomplete."""
        ...

    def save_session(self, pid: str, record: SessionRecord) -> None: ...

    async def load_session(self, pid: str) -> tuple[SessionRecord, int] | None:
        """The session and when its user was last revoked (ms, 0: never); None when there is
        none. Raises SessionError when it does not parse."""
        ...

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        """The client went away at `t_ms` and may come back: keep the session for the window."""

    def drop_session(self, pid: str, user: str) -> None:
        """The client left for good (its own disconnect): forget the session now."""

    def session_rooms(self, pid: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        """`room` joined (`change` "j") or left ("l") at stream id `at` ("" when unknown)."""
        ...

    def set_online(self, user: str, online: bool) -> None: ...
