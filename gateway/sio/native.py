"""Engine.IO sessions on the native WebSocket path (`gateway/ws`): the acceptor that decides on
a WebSocket request, and the socket it opens.

A fresh WebSocket session (`GET /socket.io/?EIO=4&transport=websocket`, no sid) gets the checks
`engine.GatewayEngineIO` makes on aiohttp's path, in the same order with the same answers:
admission (per-address rate, draining), the Engine.IO version, the Origin; then the upgrade
itself (RFC 6455), python-socketio's `connect` event, the 101 and the OPEN packet in one write.
An upgrade from polling (`sid=...`) of a session that may upgrade (connected, on polling, not
upgrading) is taken over natively too: the 101, then the probe of Engine.IO v4 (`2probe`,
`3probe`, the NOOP that ends the pending poll, `5`), then the session writes to the WebSocket.
A failed probe closes the WebSocket and leaves the session on polling, as before. Whatever is
not clearly one of those two (a request without `Upgrade`, an unknown or closed session, a
second upgrade) is left to aiohttp and python-engineio, which answer it as they always did.

`NativeSocket` is a `FastSocket` fed by `WebSocketProtocol` instead of a reader coroutine: a PONG
is handled on the spot; Engine.IO MESSAGEs, the client's CLOSE and the end of the connection
go through a small inbox, handled in order by a task that lives only while there is something
in it (python-socketio's handlers are coroutines). An idle socket has no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from types import MappingProxyType
from typing import Any

import orjson
from engineio import packet as eio_packet

from gateway.delivery.frames import ws_text_frame
from gateway.sio.engine import GatewayEngineIO
from gateway.sio.socket import FastSocket
from gateway.ws.handshake import check_upgrade, http_response, switching
from gateway.ws.head import RequestHead
from gateway.ws.protocol import close_gracefully

log = logging.getLogger("gateway.sio.native")

# Messages a client may have waiting before its connection stops being read.
INBOX_PAUSE = 32
_NO_HEADERS: Any = MappingProxyType({})


class _Mark:
    """An inbox entry that is not a message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "") -> None:
        self.reason = reason


_CLIENT_CLOSE = _Mark()
_LOST = _Mark()


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, without a task; RuntimeError if it does
    suspend (then it is closed: it must be run as a task instead)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"{coro!r} suspended")


class NativeSocket(FastSocket):
    """An Engine.IO socket on a native WebSocket (see the module docstring)."""

    _inbox: deque[Any] | None = None  # set while its task runs
    _paused = False
    _probe: asyncio.Transport | None = None  # the WebSocket of an upgrade under way
    _probed = False  # ... whose `2probe` was answered
    _probe_timer: asyncio.TimerHandle | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        self.connected = True
        self.upgraded = True
        self._tr = transport

    # -- an upgrade from polling ------------------------------------------------------------------

    def begin_upgrade(self, transport: asyncio.Transport) -> None:
        self.upgrading = True
        self._probe = transport
        self._probed = False
        self._arm_probe_timer()

    def _arm_probe_timer(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        self._probe_timer = asyncio.get_running_loop().call_later(
            self.server.ping_interval + self.server.ping_timeout, self._abandon_upgrade)

    def _probe_step(self, text: str | None) -> None:
        tr = self._probe
        assert tr is not None
        if not self._probed and text == "2probe":
            tr.write(ws_text_frame(b"3probe"))
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            self._probed = True
            self._arm_probe_timer()
        elif self._probed and text == "5" and not (self.closed or self.closing):
            self._end_probe()
            self.upgraded = True
            self.take_over(tr)
        else:
            self._abandon_upgrade()

    def _end_probe(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        self._probe = None
        self.upgrading = False

    def _abandon_upgrade(self) -> None:
        """The probe failed (wrong packet, timeout, the WebSocket gone): the WebSocket is
        closed, the session goes on polling."""
        tr = self._probe
        self._end_probe()
        if tr is not None and not tr.is_closing():
            close_gracefully(tr)

    # -- what WebSocketProtocol tells -------------------------------------------------------------

    def on_text(self, text: str) -> None:
        if self._probe is not None:
            self._probe_step(text)
            return
        kind = text[:1]
        if kind == "4":
            self._take(text[1:])
        elif kind == "3":
            self.schedule_ping()
        elif kind == "1":
            self._take(_CLIENT_CLOSE)
        elif kind not in {"2", "5", "6"}:
            self._take(_Mark("not an engine.io packet"))

    def on_binary(self, data: bytes) -> None:
        if self._probe is not None:
            self._probe_step(None)
            return
        self._take(data)

    def on_protocol_error(self, reason: str) -> None:
        if self._probe is not None:
            self._abandon_upgrade()
            return
        # What is corked goes before the close frame, and nothing after it; the messages read
        # before the broken frame are still handled (their acks are not sent).
        self.flush()
        self.muted = True
        self._take(_Mark(reason))

    def on_lost(self, transport: asyncio.Transport) -> None:
        if transport is self._probe:
            self._abandon_upgrade()
        elif transport is self._tr:
            # `_tr` stays (closing: writes to it are dropped) until the session is closed:
            # without it the socket would look like a polling one and queue what is sent meanwhile.
            self._take(_LOST)
        # else: the WebSocket of a failed upgrade (lingering after it), or of a session closed

    # -- the inbox -------------------------------------------------------------------------------

    def _take(self, item: Any) -> None:
        inbox = self._inbox
        if inbox is not None:  # its task is running and takes this too, in order
            inbox.append(item)
            tr = self._tr
            if len(inbox) > INBOX_PAUSE and tr is not None and not self._paused:
                self._paused = True
                tr.pause_reading()
            return
        self._inbox = deque((item,))
        self.server.spawn(self._run_inbox())

    async def _run_inbox(self) -> None:
        server = self.server
        trigger = server._trigger_event
        inbox = self._inbox
        try:
            while inbox:
                item = inbox.popleft()
                try:
                    if item is _LOST:
                        await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
                        break
                    if self.closed or self.cut:
                        continue  # nothing more counts; wait for the transport's end
                    if item is _CLIENT_CLOSE:
                        await self.close(wait=False, abort=True, reason=server.reason.CLIENT_DISCONNECT)
                        self._close_gracefully()
                    elif isinstance(item, _Mark):
                        server.on_bad_packet(self, item.reason)
                    else:
                        await trigger("message", self.sid, item, run_async=False)
                except Exception:  # a bug costs this client its connection, never its session's end
                    log.exception("engine.io packet handling failed; closing the connection",
                                  extra={"eio_sid": self.sid})
                    self.close_transport()
        finally:
            self._inbox = None
            if self._paused:
                self._paused = False
                if self._tr is not None:
                    self._tr.resume_reading()

    def _close_gracefully(self) -> None:
        tr = self._tr
        if tr is not None and not tr.is_closing():
            # within the ping timeout: a client gone without a FIN (the usual reason of a ping
            # timeout) would otherwise hold its buffer for the kernel's retransmission timeout
            close_gracefully(tr, self.server.ping_timeout)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """FastSocket's; and once the session is over, its connection ends too (after the CLOSE
        packet, if one was sent): nobody reads a closed session's WebSocket any more. So does the
        WebSocket of an upgrade under way: a late `5` must not adopt it for a session that is gone."""
        await super().close(wait=wait, abort=abort, reason=reason)
        if self.closed:
            if self._probe is not None:
                self._abandon_upgrade()
            self._close_gracefully()
            self._tr = None  # a closed session drops what is sent to it


class NativeAcceptor:
    """The `gateway.ws.protocol.Acceptor` of a GatewayEngineIO (see the module docstring)."""

    def __init__(self, eio: GatewayEngineIO,
                 own_origin: Callable[[str, str, str | None], bool] | None = None) -> None:
        self.eio = eio
        # an Origin that is not listed but is the gateway's own page's (the dev console): given
        # the Origin, the Host header and the peer address (gateway.http.console.own_page_origin)
        self.own_origin = own_origin
        self.max_message: int = eio.max_http_buffer_size

    def open(self, head: RequestHead, transport: asyncio.Transport) -> bytes | NativeSocket | None:
        query = head.query
        if query.get("transport") != "websocket" or "websocket" not in head.header("upgrade").lower():
            return None  # python-engineio's, on aiohttp
        if "sid" in query:
            return self._upgrade(head, query["sid"], transport)
        eio = self.eio
        admission = eio.admission
        if admission is not None:
            refused = admission.refusal(head)
            if refused is not None:
                return http_response(refused.status, orjson.dumps(refused.body()), headers=refused.headers())
        if query.get("EIO") != "4":
            return http_response(400, b'{"code":5,"message":"Unsupported protocol version"}')
        if not self._origin_allowed(head):
            return http_response(400, orjson.dumps({"code": 3, "message": f"{head.header('origin')} is not an "
                                                                          "accepted origin."}))
        key = check_upgrade(head)
        sid: str = eio.generate_id()
        sock = NativeSocket(eio, sid)
        eio.sockets[sid] = sock
        authorization = head.header("authorization")
        environ = {"HTTP_AUTHORIZATION": authorization} if authorization else _NO_HEADERS
        accepted = run_now(eio._trigger_event("connect", sid, environ, run_async=False))
        if accepted is not None and accepted is not True:
            eio.sockets.pop(sid, None)
            return http_response(401, b'{"code":4,"message":"Forbidden"}')
        transport.write(switching(key) + eio.open_frame(sid))
        sock.attach(transport)
        sock.schedule_ping()
        return sock

    def _origin_allowed(self, head: RequestHead) -> bool:
        origin = head.header("origin")
        allowed = self.eio.allowed_origins
        if not origin or allowed is None or origin in allowed:
            return True
        return self.own_origin is not None and self.own_origin(origin, head.header("host"), head.remote)

    def _upgrade(self, head: RequestHead, sid: str, transport: asyncio.Transport) -> NativeSocket | None:
        """An upgrade from polling, taken over when nothing about it is doubtful; None leaves it
        to python-engineio (which refuses what is wrong with its own answers)."""
        sock = self.eio.sockets.get(sid)
        if type(sock) is not FastSocket or not sock.connected or sock.closed or sock.closing \
                or sock.upgrading or sock.upgraded or not self._origin_allowed(head):
            return None
        key = check_upgrade(head)
        sock.__class__ = NativeSocket  # the same layout: FastSocket with the native handlers
        native: NativeSocket = sock
        transport.write(switching(key))
        native.begin_upgrade(transport)
        return native
