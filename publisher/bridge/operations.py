"""What producers ask for, as bus operations: the one vocabulary both decoders produce, and how
each is carried out through `AsyncPublisher` (the publisher's normal path, so a bridged event
gets history and recovery like any other).

A decoder raises `Refused` with a `reason` (a metric label: a fixed word, never a user id or a
room) and a `detail` for the log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from publisher.envelope import NAMESPACE

MAX_MESSAGE_BYTES = 1 << 20  # a producer's message; a 64 KiB payload's is far smaller


class Refused(ValueError):
    """A message the bridge will not carry; `reason` is its metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Emit:
    """An event for the sockets in any of `rooms` (empty: every socket), minus those in
    `excluded`; each socket gets it once."""

    event: str
    data: Any
    rooms: tuple[str, ...]
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoomsChange:
    """The sockets in any of `of` (empty: every socket) and in none of `excluded` join or leave
    `rooms` (`kind`: "join" | "leave"), or are disconnected (`kind`: "disconnect")."""

    kind: str
    of: tuple[str, ...]
    rooms: tuple[str, ...]
    excluded: tuple[str, ...] = ()


Operation = Emit | RoomsChange


def simple(op: Emit) -> bool:
    """One room or everyone, no except room: an emit a publisher's pipeline can carry."""
    return len(op.rooms) <= 1 and not op.excluded


class Batch(Protocol):
    """What the bridge needs of `AsyncPublishBatch`: emits checked as they are queued."""

    def emit(self, event: str, data: Any, *, room: str | None = None, user: str | int | None = None,
             broadcast: bool = False, strict: bool | None = None) -> None: ...

    async def __aenter__(self) -> Batch: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...


class RoomPublisher(Protocol):
    """What the bridge needs of `AsyncPublisher`."""

    def pipeline(self) -> Batch: ...

    async def emit(self, event: str, data: Any, *, room: str | None = None,
                   user: str | int | None = None, broadcast: bool = False,
                   strict: bool | None = None) -> str: ...

    async def emit_rooms(self, event: str, data: Any, rooms: str | tuple[str, ...] | None, *,
                         except_rooms: str | tuple[str, ...] = (),
                         strict: bool | None = None) -> dict[str, str]: ...

    async def sockets_join(self, room: str | None, rooms: str | tuple[str, ...], *,
                           except_rooms: str | tuple[str, ...] = ()) -> dict[str, str]: ...

    async def sockets_leave(self, room: str | None, rooms: str | tuple[str, ...], *,
                            except_rooms: str | tuple[str, ...] = ()) -> dict[str, str]: ...

    async def disconnect_room(self, room: str | None, *,
                              except_rooms: str | tuple[str, ...] = ()) -> None: ...


def check_size(raw: bytes) -> None:
    """Refuse a message over `MAX_MESSAGE_BYTES` before parsing it whole."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Refused("too_large", f"a message of {len(raw)} bytes (at most {MAX_MESSAGE_BYTES})")


def check_namespace(nsp: object) -> None:
    if nsp != NAMESPACE:
        shown = nsp if isinstance(nsp, str) and len(nsp) <= 60 else type(nsp).__name__
        raise Refused("namespace", f"namespace {shown!r}: only {NAMESPACE} is bridged")


def only_payload(args: list[Any]) -> Any:
    """The event's one argument: a gateway event carries one payload (then its offset)."""
    if len(args) > 1:
        raise Refused("arguments", f"an event with {len(args)} arguments: the gateway sends one payload")
    return args[0] if args else None


async def carry_out(op: Operation, pub: RoomPublisher) -> None:
    """Put `op` on the bus. A bad event name, payload or room raises ValueError (the publisher's
    checks: nothing sent); Redis failing raises PublishError."""
    if isinstance(op, Emit):
        if len(op.rooms) == 1 and not op.excluded:
            await pub.emit(op.event, op.data, room=op.rooms[0])
        elif not op.rooms and not op.excluded:
            await pub.emit(op.event, op.data, broadcast=True)
        else:
            await pub.emit_rooms(op.event, op.data, op.rooms or None, except_rooms=op.excluded)
        return
    for source in op.of or (None,):
        if op.kind == "join":
            await pub.sockets_join(source, op.rooms, except_rooms=op.excluded)
        elif op.kind == "leave":
            await pub.sockets_leave(source, op.rooms, except_rooms=op.excluded)
        else:
            await pub.disconnect_room(source, except_rooms=op.excluded)
