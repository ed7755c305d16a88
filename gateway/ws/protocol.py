"""The listening socket's protocol: WebSocket connections accepted below aiohttp.

Every connection starts with `AcceptProtocol`. It reads the request line: anything that is not a
GET of the Engine.IO path for the websocket transport is handed to aiohttp at once (its request
handler becomes the transport's protocol and gets the bytes read so far, so it sees the
connection exactly as if it had accepted it). A candidate's head is read whole and given to the
`Acceptor` (the Engine.IO side, `gateway/sio/native.py`), which refuses it (an HTTP answer, then
the connection closes), leaves it to aiohttp (None), or opens a session: the 101 is written and
`WebSocketProtocol` takes the transport over.

A WebSocket connection is then one `WebSocketProtocol` (a few slots, the frame reader's state)
and its session: no task, no coroutine, no request object, no header dict while it is idle.
Frames are read in `data_received`; what they carry goes to the session synchronously.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.ws.frames import (
    BINARY,
    CLOSE,
    NORMAL,
    PING,
    PONG,
    TEXT,
    FrameReader,
    ProtocolError,
    close_frame,
    close_payload,
    frame,
)
from gateway.ws.handshake import http_response
from gateway.ws.head import MAX_HEAD, BadRequest, RequestHead, head_end, parse_head, route

log = logging.getLogger("gateway.ws")

# Seconds a WebSocket closed gracefully may take to send what is buffered before it is cut.
CLOSE_GRACE = 10.0


def close_gracefully(transport: asyncio.Transport, grace: float | None = None, code: int = NORMAL) -> None:
    """End a connection the server closes: a WebSocket gets a close frame with `code`, then
    lingers (`WebSocketProtocol.linger`); anything else closes after what is buffered. Either
    way within `grace` seconds (CLOSE_GRACE by default)."""
    protocol = transport.get_protocol()
    if isinstance(protocol, WebSocketProtocol):
        protocol.linger(code, CLOSE_GRACE if grace is None else grace)
    else:
        close_after_flush(transport, grace)


def close_after_flush(transport: asyncio.Transport, grace: float | None = None) -> None:
    """Close `transport` after what is buffered, within `grace` seconds (CLOSE_GRACE by default).

    `close()` alone waits for the buffer to drain, as long as it takes: for a client gone
    without a FIN, the kernel's retransmission timeout (about 15 minutes); for one that keeps
    its window shut, for ever. The buffer (up to SEND_BUFFER_LIMIT) would be held all that time,
    by a connection no session counts any more."""
    transport.close()
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(CLOSE_GRACE if grace is None else grace, transport.abort)


class Session(Protocol):
    """What a WebSocket connection tells the Engine.IO socket it carries."""

    def on_text(self, text: str) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def on_protocol_error(self, reason: str) -> None:
        """The client broke RFC 6455. Called before the close frame is written: what the session
        still holds for the client goes now, and nothing after (the close frame is the last)."""

    def on_lost(self, transport: asyncio.Transport) -> None:
        """The connection `transport` is gone (either side closed it). A session may have had
        more than one (an upgrade's probe that failed, then another): it acts on its own."""


class Acceptor(Protocol):
    def open(self, head: RequestHead, transport: asyncio.Transport) -> bytes | Session | None:
        """An HTTP answer that refuses the request, None to leave it to aiohttp, or the session
        of a WebSocket whose 101 (and first frames) this has written to `transport`."""

    @property
    def max_message(self) -> int: ...


class AcceptProtocol(asyncio.Protocol):
    """A new connection, until its first request says whose it is (see the module docstring)."""

    __slots__ = ("_acceptor", "_buf", "_http", "_timer", "_transport")

    def __init__(self, acceptor: Acceptor, http: Callable[[], asyncio.Protocol], head_timeout: float) -> None:
        self._acceptor = acceptor
        self._http = http
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer = asyncio.get_running_loop().call_later(head_timeout, self._timed_out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._transport = None

    def eof_received(self) -> bool | None:
        return False  # a client that half-closes before its request is done: close

    def _timed_out(self) -> None:
        """No complete request head within HANDSHAKE_TIMEOUT (aiohttp's keep-alive timeout does
        the same for the connections it has)."""
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buf = self._buf + data if self._buf else data
        native = route(buf)
        if native is None:
            self._buf = buf
            return
        if not native:
            self._hand_over(transport, buf)
            return
        end = head_end(buf)
        if end < 0 or end > MAX_HEAD:
            if len(buf) > MAX_HEAD:
                self._answer(transport, http_response(431, b'{"error":"request head too large"}'))
            else:
                self._buf = buf
            return
        self._stop_timer()
        self._buf = b""
        try:
            head = parse_head(buf[:end])
            peer = transport.get_extra_info("peername")
            head.remote = peer[0] if isinstance(peer, tuple) else None
            outcome = self._acceptor.open(head, transport)
        except BadRequest as exc:
            self._answer(transport, http_response(exc.status, b'{"error":"bad request","reason":"'
                                                  + exc.reason.encode() + b'"}'))
            return
        except Exception:  # a bug must cost this client its request, not the listener
            log.exception("websocket handshake failed")
            self._answer(transport, http_response(500, b'{"error":"internal"}'))
            return
        if outcome is None:
            self._hand_over(transport, buf)
        elif isinstance(outcome, bytes):
            self._answer(transport, outcome)
        else:
            ws = WebSocketProtocol(outcome, transport, self._acceptor.max_message)
            transport.set_protocol(ws)
            self._transport = None
            if len(buf) > end:  # frames sent right behind the request
                ws.data_received(buf[end:])

    def _answer(self, transport: asyncio.Transport, response: bytes) -> None:
        self._stop_timer()
        self._buf = b""
        transport.write(response)
        transport.close()

    def _hand_over(self, transport: asyncio.Transport, buf: bytes) -> None:
        """aiohttp's request handler takes the connection, with what was read of it."""
        self._stop_timer()
        self._buf = b""
        self._transport = None
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(buf)


class WebSocketProtocol(FrameReader, asyncio.Protocol):
    """An open WebSocket: frames in, messages to the session; PINGs answered, CLOSE echoed.

    A PING is answered only while the transport takes writes (between `pause_writing` and
    `resume_writing` it is not): a client that sends PINGs and never reads would otherwise have
    a PONG buffered in user space for each, without bound. RFC 6455 (5.5.3) lets an endpoint
    answer only some PINGs; what the session sends is bounded by its own limit (FastSocket)."""

    __slots__ = ("_broken", "_linger", "_session", "_transport", "_writable")

    def __init__(self, session: Session, transport: asyncio.Transport, max_message: int) -> None:
        FrameReader.__init__(self, max_message)
        self._session = session
        self._transport: asyncio.Transport | None = transport
        self._writable = True
        self._linger: asyncio.TimerHandle | None = None
        self._broken = False  # the client broke the framing: nothing it sends can be read

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._linger is not None:
            self._drain(transport, data)
            return
        error: ProtocolError | None = None
        try:
            messages = self.feed(data)
        except ProtocolError as exc:
            messages, error = exc.before, exc  # what came before the broken frame still counts
        session = self._session
        for opcode, payload in messages:
            if opcode == TEXT:
                session.on_text(payload)  # type: ignore[arg-type]
            elif opcode == BINARY:
                session.on_binary(payload)  # type: ignore[arg-type]
            elif opcode == PING:
                if self._writable:
                    transport.write(frame(PONG, payload))  # type: ignore[arg-type]
            elif opcode == CLOSE:
                try:
                    code = close_payload(payload)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    self._fail(transport, exc)
                    return
                # The client closed first and sends nothing more: the TCP close is ours (RFC 6455 7.1.1).
                transport.write(close_frame(NORMAL if code == 1005 else code))
                close_after_flush(transport)
                return
            if transport.is_closing() or self._linger is not None:
                return
        if error is not None:
            self._fail(transport, error)

    def linger(self, code: int, grace: float) -> None:
        """The server closes: its close frame goes out, then the connection is still read until
        the client's close frame or its FIN, and closed only then (or after `grace` seconds).

        Closed at once, a socket with unread data (a client still sending, or one whose reading
        was paused) ends in a TCP reset, and a reset makes the client's kernel drop what it has
        not read yet: the DISCONNECT, the close frame, the acks saying why it was refused. This
        is the lingering close of HTTP servers (nginx's `lingering_close`)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        transport.write(close_frame(code))
        self._linger = asyncio.get_running_loop().call_later(grace, transport.abort)
        transport.resume_reading()  # the session may have paused it; what comes is dropped

    def _drain(self, transport: asyncio.Transport, data: bytes) -> None:
        """Read after the server's close frame: frames are dropped; the client's close frame
        means it sends nothing more, so the TCP close is ours now."""
        if self._broken:
            return
        try:
            messages = self.feed(data)
        except ProtocolError:
            self._broken = True  # unreadable from here: wait for the FIN or the grace
            return
        if any(opcode == CLOSE for opcode, _ in messages):
            close_after_flush(transport)

    def _fail(self, transport: asyncio.Transport, exc: ProtocolError) -> None:
        self._broken = True
        self._session.on_protocol_error(f"websocket error: {exc.code} {exc.reason}")
        self.linger(exc.code, CLOSE_GRACE)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        transport, self._transport = self._transport, None
        if self._linger is not None:
            self._linger.cancel()
        if transport is not None:
            self._session.on_lost(transport)
