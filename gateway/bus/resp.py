"""The reading side of a Redis pub/sub connection: RESP parsed in C by hiredis.

`RespProtocol` reads each of `shards`' connections (one per shard, SSUBSCRIBE); `pack` makes a
RESP command, `FailureLog` counts and logs the messages a handler could not take. They were
shared with the v1 listener (`subscriber.Subscriber`, one connection, SUBSCRIBE), removed once
nothing used it; they stay apart from `shards` as the protocol layer under it, with no
knowledge of shards, slots or channels.

The listener is an `asyncio.Protocol` fed by the event loop: no task reads it, so there is no
task to die silently (the python-socketio failure that left a worker deaf for a day), and a
burst of messages is parsed in one `data_received` call.

Only a stream that does not parse as RESP is a reason to reconnect. What the application does
with a message is not: an exception raised while one message is handled is logged, counted
(`bus_events_total{event="message_failed"}`) and the next message is handled. Letting it out of
`data_received` would close the connection, and a message published to every replica (a bad
control message) would then make every replica reconnect at once, again at each resend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import hiredis

log = logging.getLogger("gateway.bus")

FAILURE_LOG_EVERY = 10.0  # seconds between two tracebacks of failed messages (each is counted)


def pack(*args: bytes) -> bytes:
    """A RESP command."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Reader(Protocol):
    """What a `RespProtocol` hands its replies to: one shard's connection
    (`shards/connection.py`)."""

    def on_reply(self, reply: Any) -> None: ...

    def batch_begin(self) -> None: ...

    def batch_end(self) -> None: ...

    def failed(self, where: str) -> None: ...


class RespProtocol(asyncio.Protocol):
    """The reading side of a pub/sub connection: RESP parsed by hiredis, each reply handed to
    the owner, the replies of one read between `batch_begin` and `batch_end`. Only a stream
    that does not parse closes the connection; an exception raised by the owner is `failed`."""

    def __init__(self, owner: Reader) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        on_reply = owner.on_reply
        try:
            owner.batch_begin()
        except Exception:  # noqa: BLE001 - see the module docstring: never out of data_received
            owner.failed("batch_begin")
        try:
            reply = reader.gets()
            while reply is not False:
                try:
                    on_reply(reply)
                except Exception:  # noqa: BLE001 - one message's failure is not the connection's
                    owner.failed("message")
                reply = reader.gets()
        except hiredis.ProtocolError:
            log.exception("redis pub/sub stream does not parse; reconnecting")
            if self.transport is not None:
                self.transport.abort()
        finally:
            try:
                owner.batch_end()
            except Exception:  # noqa: BLE001 - same
                owner.failed("batch_end")

    def write(self, data: bytes) -> bool:
        """Send `data`; False when the connection is closing or gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class FailureLog:
    """Handling one message raised: count it, log it (a traceback at most every
    FAILURE_LOG_EVERY seconds, so a stream of bad messages cannot flood the log), go on.
    `failed` is called from inside the `except` block, so the traceback is the handler's."""

    def __init__(self, counters: Callable[[str], None]) -> None:
        self.count = counters
        self._next_log = 0.0
        self._unlogged = 0

    def failed(self, where: str, **extra: Any) -> None:
        self.count("message_failed")
        now = time.monotonic()
        if now < self._next_log:
            self._unlogged += 1
            return
        self._next_log = now + FAILURE_LOG_EVERY
        unlogged, self._unlogged = self._unlogged, 0
        log.exception("bus message could not be handled; dropped, the connection is kept",
                      extra={"where": where, "unlogged_before": unlogged, **extra})
