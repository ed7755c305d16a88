"""What the delivery core needs from the layers around it, as `Protocol`s.

The core is written against these and imports neither python-socketio nor Redis: the
Socket.IO layer (`gateway.sio`) implements `SocketLayer` and `SocketWriter`, `gateway.metrics`
implements `Counters`, and each bus (`gateway.bus`) implements `bus.contract.Backend`. Tests
drive the core with small fakes of each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.delivery.registry import Conn


class SocketWriter(Protocol):
    """One Engine.IO socket, as delivery writes to it (`gateway.sio.socket.FastSocket`)."""

    @property
    def closed(self) -> bool: ...

    @property
    def is_websocket(self) -> bool: ...

    def push_message(self, text: bytes, frame: bytes) -> None:
        """Send a Socket.IO packet: `frame` on WebSocket (prebuilt, shared by recipients),
        `text` through the polling queue."""

    def close_transport(self, *, flush: bool = False) -> None:
        """Drop the connection without a Socket.IO DISCONNECT, so the client reconnects."""


class SocketLayer(Protocol):
    """The Socket.IO server, as the core calls back into it."""

    async def kick(self, conn: Conn, reason: str) -> None:
        """Disconnect with a Socket.IO DISCONNECT (the client does not reconnect by itself)."""

    def begin_batch(self) -> None:
        """What is delivered from here to `end_batch` leaves in one write per socket."""

    def end_batch(self) -> None: ...


class Counters(Protocol):
    """The metrics delivery moves (`gateway.metrics.Metrics`)."""

    def sent(self, event: str, n: int, t_ms: float) -> None: ...

    def sent_replay(self, n: int) -> None: ...

    def error(self, kind: str) -> None: ...

    def bus_received(self, kind: str) -> None: ...

    def bus_event(self, name: str) -> None: ...
