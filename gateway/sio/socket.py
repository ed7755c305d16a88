"""Engine.IO sockets that write straight to the WebSocket transport.

python-engineio gives every socket an unbounded queue and a writer task: each packet costs a
queue put, a task switch and an `await ws.send`, and a client that stops reading grows the
queue until the ping timeout. Here, once a socket is on WebSocket, every packet (ours, and the
ones python-socketio and python-engineio send: CONNECT, ACK, PING, CLOSE) is written to the
asyncio transport synchronously, in call order, so:

- ordering holds by construction: a write happens when `send` is called, nothing overtakes it;
- a fan-out writes one prebuilt frame per recipient (`frames.py`), with no task per recipient;
- the socket's outgoing buffer is the kernel's plus the transport's, and it is bounded: past
  `send_buffer_limit` bytes the transport is closed, the client reconnects and recovers.

Polling sockets (and a socket during its upgrade) keep python-engineio's queue, bounded too,
and follow Engine.IO v4 where python-engineio does not (tests/conformance): one poll at a time
(a second one ends the session), a poll whose client went away ends the session, a CLOSE from
the client answers a held poll with a NOOP.
The only private thing used is `AsyncSocket`'s own attributes; the socket class is swapped
right after python-engineio creates it (it offers no factory hook).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import engineio
from aiohttp import WSMsgType, web
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

from gateway.delivery.frames import ws_text_frame
from gateway.ws.frames import BINARY
from gateway.ws.frames import frame as ws_frame
from gateway.ws.protocol import close_gracefully

log = logging.getLogger("gateway.sio.socket")

# Packets a polling socket may hold before it counts as a slow consumer.
MAX_POLLING_QUEUE = 1000
POLLING_BUFFER_FACTOR = 3


class WebSocketAdapter(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp WebSocket, without permessage-deflate.

    Compression would cost CPU on every frame and rule out sharing one frame between
    recipients; notification payloads are small.
    """

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False, autoping=True
        )
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


class FastSocket(AsyncSocket):  # type: ignore[misc]
    """An Engine.IO socket that writes WebSocket frames itself (see the module docstring)."""

    _tr: asyncio.Transport | None = None
    _out: list[bytes] | None = None  # frames held until the end of this event-loop turn
    _held = 0  # their size: with what the transport buffers, bounded by SEND_BUFFER_LIMIT
    _queued_bytes = 0  # polling: bytes waiting for the next poll, bounded by SEND_BUFFER_LIMIT too
    _polling = False  # polling: a GET is in progress
    _poll_request: web.BaseRequest | None = None  # ... and its request, whose connection may go
    _poll_waiter: asyncio.Future[None] | None = None  # ... set while it waits for packets
    cut = False  # close_transport was called: what the client still sends is not handled
    muted = False  # nothing more is written: cut, or past the close frame of a protocol error
    connected: bool
    upgraded: bool
    last_ping: float | None
    on_overflow: Callable[[FastSocket], None] | None = None

    def write_frame(self, frame: bytes) -> None:
        tr = self._tr
        if tr is None or self.muted or tr.is_closing():  # uvloop raises on a write to a closed transport
            return
        tr.write(frame)
        if tr.get_write_buffer_size() > self.server.send_buffer_limit:
            self._overflow()

    def push_message(self, text: bytes, frame: bytes) -> None:
        """Send an Engine.IO MESSAGE: the prebuilt frame on WebSocket, else through the queue.

        On WebSocket the frame is corked until the end of the loop turn: all that one read from
        Redis brings for this socket leaves in one write (one system call instead of one per
        event, which is most of the cost of a fan-out).
        """
        tr = self._tr
        if tr is not None:
            out = self._out
            if out is None:
                self._out = [frame]
                self._held = len(frame)
                self.server.cork(self)
            else:
                out.append(frame)
                self._held += len(frame)
            if self._held > self.server.send_buffer_limit:
                # A burst larger than the limit leaves now, in pieces: a reader takes it, and
                # for a client that stopped reading the transport's buffer passes the limit.
                self.flush()
        elif not self.closed and not self.closing:
            self.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, text.decode()))
            self._queued_bytes += len(text)
            # A polling session has no kernel buffer behind its queue, and a client fetches in
            # bursts (a replay on recovery comes at once): it may hold 3 times the limit.
            if self._queued_bytes > POLLING_BUFFER_FACTOR * self.server.send_buffer_limit \
                    or self.queue.qsize() > MAX_POLLING_QUEUE:
                self._overflow()

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        """A poll, or an upgrade request. Engine.IO allows one poll at a time per session and one
        upgrade at a time.

        A second poll while one is in progress ends the session, as the protocol says (and its
        test suite checks): the held poll answers a CLOSE, the second one a 400. A client whose
        poll died without the server seeing it (no FIN came) loses its session that way and
        reconnects; socket.io-client then recovers what it missed. A second upgrade is refused
        (held, each would wait for the ping interval)."""
        upgrading = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if upgrading:
            if self.upgrading or self.upgraded:
                raise engineio.exceptions.EngineIOError("a second upgrade of the session")
            return await super().handle_get_request(environ)
        if self._polling:
            if not (self.closed or self.closing):
                self.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))  # the held poll's answer
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            raise engineio.exceptions.EngineIOError("a second poll while one is in progress")
        self._polling = True
        self._poll_request = environ.get("aiohttp.request")
        try:
            return await super().handle_get_request(environ)
        finally:
            self._polling = False
            self._poll_request = None
            self._queued_bytes = 0  # a poll takes everything queued

    async def poll(self) -> list[eio_packet.Packet]:
        """Wait for packets to send to a polling client, at most PING_INTERVAL + PING_TIMEOUT.

        A poll whose client went away (an aborted request, a closed tab) ends the session at
        once, as engine.io's server does, instead of at that deadline: the heartbeat's tick
        looks at the connections of the polls that wait (`engine.Heartbeat`) and wakes those
        whose connection is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.ping_interval + self.server.ping_timeout
        queue: Any = self.queue
        while queue.empty():
            if self.poll_abandoned():
                raise engineio.exceptions.QueueEmpty  # python-engineio ends the session with this
            fut: asyncio.Future[None] = loop.create_future()
            self._poll_waiter = fut
            queue.add_getter(fut)
            self.server.heartbeat.watch_poll(self)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise engineio.exceptions.QueueEmpty from None
            finally:
                queue.remove_getter(fut)
                self._poll_waiter = None
                self.server.heartbeat.unwatch_poll(self)
        packets = []
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)  # the end of the session: every poll from now on sees it
                break
            packets.append(pkt)
        return packets

    def poll_abandoned(self) -> bool:
        """Whether the connection of the poll in progress is gone (aiohttp does not cancel a
        handler whose client leaves)."""
        request = self._poll_request
        if request is None:
            return False
        transport = request.transport
        return transport is None or transport.is_closing()

    def wake_poll(self) -> None:
        """Make a waiting poll look at its queue and its connection again."""
        fut = self._poll_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """python-engineio's, reading the body whole: a body split over two TCP segments would
        otherwise be parsed truncated (its aiohttp driver reads what has arrived so far)."""
        try:
            length = int(environ.get("CONTENT_LENGTH", "0"))
        except ValueError:
            raise engineio.exceptions.EngineIOError("bad Content-Length") from None
        if length > self.server.max_http_buffer_size:
            raise engineio.exceptions.ContentTooLongError
        try:
            body = (await environ["wsgi.input"].readexactly(length)).decode("utf-8")
            packets = eio_payload.Payload(encoded_payload=body).packets
        except (asyncio.IncompleteReadError, UnicodeDecodeError, ValueError) as exc:
            # python-engineio answers an EngineIOError with 400 and ends the session
            raise engineio.exceptions.EngineIOError(f"bad polling body: {exc}") from None
        if self.closed:
            return  # it ended while the body came; the next request is told so
        for pkt in packets:
            if pkt.packet_type == eio_packet.CLOSE:
                # The client leaves: a poll it still holds is answered with a NOOP (as engine.io's
                # server does), and nothing after the CLOSE counts.
                if self._polling:
                    self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
                await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
                return
            await self.receive(pkt)

    def flush(self) -> None:
        out, self._out = self._out, None
        self._held = 0
        if out:
            self.write_frame(out[0] if len(out) == 1 else b"".join(out))

    @property
    def is_websocket(self) -> bool:
        return self._tr is not None

    def close_transport(self, *, flush: bool = False) -> None:
        """Drop the connection without a Socket.IO DISCONNECT: the client reconnects by itself.

        `flush` closes gracefully (`gateway.ws.protocol.close_gracefully`): what is buffered goes
        out first, for a drain, or for a client refused for what it sent, which should read why
        (the DISCONNECT or the error acks written a moment ago, which an abort, or a reset, would
        drop). Without it the connection is cut at once (a slow consumer, whose buffer is the
        problem). Either way nothing more is written, and nothing the client sends from here on
        is handled.

        A polling session ends at once: a poll waiting now returns what is queued (never with
        a CLOSE behind it: socket.io-client would drop the socket before handling the events
        and count them as missed), and the next poll finds no session, which the client takes
        as a transport error: it reconnects and recovers.
        """
        tr = self._tr
        if tr is not None:
            if not flush:  # also a graceful close under way (shutdown cuts a lingering one)
                self.cut = self.muted = True
                tr.abort()
            elif not self.cut:
                self.flush()
                self.cut = self.muted = True
                close_gracefully(tr)
            return
        if self.cut:
            return
        self.cut = True
        if not self.closed:
            self.queue.put_nowait(None)  # ends a waiting poll with what is queued
            self.server.spawn(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE))

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """python-engineio's close, without waiting for a client to drain the queue (one that
        never polls again would hold the request forever), and the session forgotten."""
        await super().close(wait=False, abort=abort, reason=reason)
        if self.closed:
            # A poll in flight holds the socket and still returns what is queued; a new request
            # would find no session anyway (python-engineio refuses a closed one). Forgotten on
            # the next loop turn: the request that closed it still looks it up to answer.
            asyncio.get_running_loop().call_soon(self._forget)

    def _forget(self) -> None:
        sockets = self.server.sockets
        if sockets.get(self.sid) is self:
            del sockets[self.sid]

    def _overflow(self) -> None:
        callback = self.on_overflow
        self.on_overflow = None  # once
        if callback is not None:
            callback(self)
        self.close_transport()

    async def send(self, pkt: eio_packet.Packet) -> None:
        if self._tr is not None:
            if self._out:
                self.flush()  # what is corked was sent first: it goes first
            self.write_frame(_packet_frame(pkt))
            return
        await super().send(pkt)

    async def _websocket_handler(self, ws: WebSocketAdapter) -> None:
        """python-engineio's entry for a WebSocket that follows polling (an upgrade)."""
        sock: web.WebSocketResponse = ws._sock
        if self.connected and not await self._upgrade(sock, self.server.ping_interval + self.server.ping_timeout):
            return
        await self.serve_websocket(sock)

    async def serve_websocket(self, sock: web.WebSocketResponse) -> None:
        """Run the socket on a prepared WebSocket until either side closes it."""
        self.connected = True
        self.upgraded = True
        writer = sock._writer
        if writer is None:  # pragma: no cover - prepare() always sets it
            return
        transport: asyncio.Transport = writer.transport
        if transport.is_closing():
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            return
        self.take_over(transport)
        try:
            await self._read_loop(sock, self.server.ping_interval + self.server.ping_timeout)
        finally:
            self._tr = None
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            if not sock.closed:
                await sock.close()

    def take_over(self, transport: asyncio.Transport) -> None:
        """From now on, write to `transport`. What was queued before the switch goes first, in
        order. A NOOP was only there to end a poll (the upgrade's): nothing to tell the WebSocket."""
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is not None and pkt.packet_type != eio_packet.NOOP:
                transport.write(_packet_frame(pkt))
        self._tr = transport

    def schedule_ping(self) -> None:
        """One heartbeat scheduler for all sockets (`engine.Heartbeat`), not a task per socket."""
        if self.last_ping:  # the previous ping was answered
            self.last_ping = None
            self.server.heartbeat.schedule(self)

    async def _upgrade(self, sock: web.WebSocketResponse, timeout: float) -> bool:
        """The polling-to-WebSocket upgrade of Engine.IO v4: 2probe, 3probe, then 5."""
        self.upgrading = True
        try:
            msg = await sock.receive(timeout=timeout)
            if msg.type != WSMsgType.TEXT or msg.data != "2probe":
                return False
            await sock.send_str("3probe")
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            msg = await sock.receive(timeout=timeout)
            if msg.type != WSMsgType.TEXT or msg.data != "5":
                return False
        except (TimeoutError, ConnectionError):
            return False
        finally:
            self.upgrading = False
        self.upgraded = True
        return True

    async def _read_loop(self, sock: web.WebSocketResponse, timeout: float) -> None:
        """Engine.IO v4 packets from the client, decoded by their first character.

        python-engineio's decoder tries `json.loads` on every message and raises on most; the
        client sends only MESSAGE (4), PONG (3), CLOSE (1), and during an upgrade NOOP/UPGRADE.
        """
        trigger = self.server._trigger_event
        while True:
            try:
                msg = await sock.receive(timeout=timeout)
            except (TimeoutError, ConnectionError):
                return
            if self.closed or self.cut:
                return
            if msg.type == WSMsgType.TEXT:
                data: str = msg.data
                kind = data[:1]
                if kind == "4":
                    await trigger("message", self.sid, data[1:], run_async=False)
                elif kind == "3":
                    self.schedule_ping()
                elif kind == "1":
                    await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
                    return
                elif kind not in {"2", "5", "6"}:
                    self.server.on_bad_packet(self, "not an engine.io packet")
                    return
            elif msg.type == WSMsgType.BINARY:
                await trigger("message", self.sid, msg.data, run_async=False)
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the peer is gone or broke the protocol
                if msg.type == WSMsgType.ERROR:
                    self.server.on_bad_packet(self, f"websocket error: {msg.data}")
                return
            if self.closed:
                return


def _packet_frame(pkt: eio_packet.Packet) -> bytes:
    """The WebSocket frame of an Engine.IO packet: text, or binary for a binary attachment."""
    encoded = pkt.encode()
    return ws_text_frame(encoded.encode()) if isinstance(encoded, str) else ws_frame(BINARY, encoded)
