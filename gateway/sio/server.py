"""The Socket.IO server: python-socketio, with the namespace's protocol decisions made here.

python-socketio parses packets and keeps sid bookkeeping; this subclass decides what a CONNECT,
an EVENT and a disconnect mean for `/notifications`: the CONNECT runs the sequence of
`delivery.connect` (authentication, recovery; the reply waits until the socket's subscriptions
are confirmed, so nothing sent after the client sees `connect` is missed), client events meet an
allow-list and a rate limit (anything else is refused with an ack and never reaches application
code), and a socket's session, presence and rooms follow it on the way out.

It owns the delivery core and is the core's `SocketLayer`: kicks and write batches come back
here through that interface, handed in at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from gateway import errors
from gateway.bus.contract import Backend
from gateway.config import Settings
from gateway.delivery.connect import Accepted, ConnectSequence
from gateway.delivery.core import DeliveryCore
from gateway.delivery.recovery import Recovery
from gateway.delivery.registry import Conn
from gateway.metrics import Metrics
from gateway.policy.admission import Admission
from gateway.policy.auth import Authenticator
from gateway.policy.ratelimit import BucketState, TokenBucket
from gateway.sio.engine import GatewayEngineIO
from gateway.sio.managers import NotificationManager
from gateway.sio.packets import FastPacket
from gateway.sio.socket import FastSocket
from publisher.envelope import NAMESPACE, Position

log = logging.getLogger("gateway.socket")

_CONNECT_REPLY = f"{sio_packet.CONNECT}{NAMESPACE},"  # the CONNECT reply's text up to its JSON
SUBSCRIBE_EVENT = "subscribe:notifications"
BINARY_PACKETS = frozenset({"5", "6"})  # Socket.IO BINARY_EVENT, BINARY_ACK
MAX_ATTACHMENTS = 4  # no event of this namespace needs more (each is up to MAX_PAYLOAD_BYTES)
MAX_SUBSCRIBE_PAYLOAD = 4096
SWEEP_EVERY = 0.25
# CONNECTs, and packets before a CONNECT is accepted, one transport may send: socket.io-client
# sends one CONNECT per transport (a few more if the application retries with a new token).
PRE_CONNECT_BURST = 5
PRE_CONNECT_RATE = 0.2  # per second


class _SidBook:
    """python-socketio's bookkeeping of a sid in the namespace (`connect.SidBook`)."""

    def __init__(self, manager: NotificationManager) -> None:
        self._manager = manager

    def enter(self, sid: str, eio_sid: str) -> None:
        self._manager.basic_enter_room(sid, NAMESPACE, None, eio_sid=eio_sid)
        self._manager.basic_enter_room(sid, NAMESPACE, sid, eio_sid=eio_sid)

    def leave(self, sid: str) -> None:
        self._manager.basic_disconnect(sid, NAMESPACE)


class GatewayServer(socketio.AsyncServer):  # type: ignore[misc]
    def __init__(self, settings: Settings, backend: Backend, authenticator: Authenticator,
                 recovery: Recovery, admission: Admission, metrics: Metrics) -> None:
        self.core = DeliveryCore(backend, metrics, self, recovery=recovery.enabled,
                                 rooms_changed=self._save_rooms)
        manager = NotificationManager(self.core, self._socket_gone)
        origins: list[str] | str = list(settings.frontend_url)
        if "*" in settings.frontend_url:
            origins = "*"
        super().__init__(
            client_manager=manager,
            async_mode="aiohttp",
            async_handlers=False,  # one client's events are handled in order
            cors_allowed_origins=origins,
            cors_credentials=True,
            max_http_buffer_size=settings.max_payload_bytes,
            ping_interval=settings.ping_interval / 1000,
            ping_timeout=settings.ping_timeout / 1000,
            transports=["polling", "websocket"],
            serializer=FastPacket,
            # Named loggers of ours: with logger=False the libraries attach a plain-text handler of
            # their own, which would print beside the JSON lines (and echo client input raw).
            logger=logging.getLogger("gateway.socketio"),
            engineio_logger=logging.getLogger("gateway.engineio"),
        )
        self.settings = settings
        self.recovery = recovery
        self.admission = admission
        self.metrics = metrics
        self.connects = ConnectSequence(self.core, authenticator, admission, recovery, metrics, _SidBook(manager),
                                        new_sid=self.eio.generate_id)
        self.eio.send_buffer_limit = settings.send_buffer_limit
        self.eio.allowed_origins = None if origins == "*" else frozenset(origins)
        self.eio.admission = admission
        self.eio.bad_packet_hook = self._bad_packet
        self.bucket = TokenBucket(settings.rate_limit_events, settings.rate_limit_burst)
        self._reasons: dict[str, str] = {}
        self._left: set[str] = set()  # sids whose client sent its own DISCONNECT: it will not come back
        self._pre_connect = TokenBucket(PRE_CONNECT_RATE, PRE_CONNECT_BURST)
        self._budgets: dict[str, BucketState] = {}  # by eio sid, while its transport lives
        self._sweeper: asyncio.Task[None] | None = None

    def _engineio_server_class(self) -> type[GatewayEngineIO]:
        return GatewayEngineIO

    # -- the core's SocketLayer -------------------------------------------------------------------

    def begin_batch(self) -> None:
        self.eio.begin_batch()

    def end_batch(self) -> None:
        self.eio.end_batch()

    async def kick(self, conn: Conn, reason: str) -> None:
        """A Socket.IO DISCONNECT: the client does not reconnect by itself."""
        if self.core.get(conn.sid) is not conn:
            return
        self._reasons[conn.sid] = reason
        if reason == errors.KICKED.code:
            # A kicked client does not come back: a user's kick had the publisher delete its
            # sessions (its `pid` is None already), a room's has its session dropped as it goes.
            self._left.add(conn.sid)
        await self.disconnect(conn.sid, namespace=NAMESPACE)
        # socket.io-client closes its transport on a DISCONNECT; one that does not is closed a
        # second later, gracefully (it still reads the DISCONNECT if it is sending meanwhile)
        asyncio.get_running_loop().call_later(1.0, lambda: conn.eio.close_transport(flush=True))

    def _save_rooms(self, conn: Conn, rooms: list[str], room: str, change: str, at: Position | None) -> None:
        """A socket's rooms changed: its session record follows, also when its transport dropped
        meanwhile (its client may be about to recover that session)."""
        if conn.pid is not None:
            self.recovery.rooms_changed(conn.pid, conn.identity.user_id, rooms, room, change, at)

    # -- life cycle -------------------------------------------------------------------------------

    def start_sweeper(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="socket-sweeper")

    async def stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        """Expired tokens out within a second; handshakes that never finish, closed."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self._sweep_once()
            except Exception:  # a bug here must not end expiry enforcement for everyone
                log.exception("socket sweeper failed; continuing")

    async def _sweep_once(self) -> None:
        for conn in self.core.registry.expired(time.time()):  # the heap holds exp + leeway
            log.info("token expired while connected", extra={"sid": conn.sid, "user_id": conn.identity.user_id})
            await self.kick(conn, errors.EXPIRED_WHILE_CONNECTED.code)
        for eio_sid in self.admission.stale_handshakes(time.monotonic()):
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None and self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is None:
                self.metrics.error(errors.HANDSHAKE_TIMEOUT.metric)
                sock.close_transport()

    # -- CONNECT ----------------------------------------------------------------------------------

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        self.admission.handshake_started(eio_sid)
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if namespace != NAMESPACE:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Invalid namespace"}, namespace=namespace))
            return
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            return  # already connected on this transport: socket.io-client never does this
        eio_socket: FastSocket | None = self.eio.sockets.get(eio_sid)
        if eio_socket is None:
            return
        self.admission.handshake_done(eio_sid)
        eio_socket.on_overflow = self._on_overflow
        outcome = await self.connects.run(eio_sid, eio_socket, data, self.environ.get(eio_sid, {}))
        if outcome is None:
            return
        if not isinstance(outcome, Accepted):
            code = outcome.code
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": code.message, "data": {"code": code.code}},
                namespace=NAMESPACE))
            return
        conn = outcome.conn
        reply: dict[str, str] = {"sid": conn.sid}
        if conn.pid is not None:
            reply["pid"] = conn.pid
        # The Socket.IO CONNECT packet written as text (what python-socketio's Packet encodes
        # it to, byte for byte): one per handshake, without a Packet object, its binary scan
        # and python-engineio's send chain. A session closed meanwhile gets nothing, as there.
        sock = self.eio.sockets.get(conn.eio_sid)
        if sock is not None and not sock.closed:
            await sock.send(eio_packet.Packet(eio_packet.MESSAGE, _CONNECT_REPLY + orjson.dumps(reply).decode()))
        self.core.accepted(conn)
        log.info("connected", extra={"sid": conn.sid, "user_id": conn.identity.user_id,
                                     "transport": "websocket" if conn.eio.is_websocket else "polling",
                                     "recovered": outcome.recovered})

    # -- EVENT ------------------------------------------------------------------------------------

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]) -> None:
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        conn = self.core.get(sid) if sid is not None else None
        if conn is None:
            return
        event = data[0] if data else None
        if await self._overspent(conn, eio_sid, id):
            return
        if event == SUBSCRIBE_EVENT:
            if len(data) > 2 or len(repr(data[1:])) > MAX_SUBSCRIBE_PAYLOAD:
                self.metrics.error(errors.INVALID_PAYLOAD.metric)
                await self._ack(eio_sid, id, {"ok": False, "error": errors.INVALID_PAYLOAD.code})
                return
            await self._ack(eio_sid, id, {"ok": True, "rooms": list(conn.rooms)})
            return
        self.metrics.error(errors.UNKNOWN_EVENT.metric)
        log.info("unknown client event refused", extra={"sid": sid, "event": str(event)[:64]})
        await self._ack(eio_sid, id, {"ok": False, "error": errors.UNKNOWN_EVENT.code})

    async def _ack(self, eio_sid: str, id: int | None, payload: dict[str, Any]) -> None:
        if id is None:
            return
        await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=NAMESPACE, id=id, data=[payload]))

    async def _handle_ack(self, eio_sid: str, namespace: str | None, id: int, data: Any) -> None:
        """The server asks for no acks: a client's ACK is ignored, but spends from the same
        bucket as events, so a stream of them ends like a flood of events."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        conn = self.core.get(sid) if sid is not None else None
        if conn is not None:
            await self._overspent(conn, eio_sid, None)

    async def _overspent(self, conn: Conn, eio_sid: str, id: int | None) -> bool:
        """Spend one token of the client's bucket; when it is empty, count the refusal, say so
        in the ack asked for, and disconnect a client past RATE_LIMIT_DISCONNECT_AFTER."""
        if self.bucket.take(conn):
            return False
        conn.refused += 1
        self.metrics.error(errors.RATE_LIMITED.metric)
        await self._ack(eio_sid, id, {"ok": False, "error": errors.RATE_LIMITED.code})
        if conn.refused >= self.settings.rate_limit_disconnect_after:
            log.warning("disconnecting a flooding client", extra={"sid": conn.sid, "user_id": conn.identity.user_id})
            await self.kick(conn, errors.FLOODING.code)
        return True

    def _within_budget(self, eio_sid: str, data: Any) -> bool:
        """Every CONNECT, and every packet of a transport with no connected socket, spends from
        the transport's budget: a client cannot loop CONNECT/DISCONNECT (each a session record
        in Redis), nor repeat refused CONNECTs and early events until HANDSHAKE_TIMEOUT."""
        if isinstance(data, str) and data[:1] != "0" and self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None:
            return True
        budget = self._budgets.get(eio_sid)
        if budget is None:
            budget = self._budgets[eio_sid] = BucketState()
        return self._pre_connect.take(budget)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if not self._within_budget(eio_sid, data):
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None and not sock.cut:
                self.metrics.error(errors.CONNECT_FLOOD.metric)
                log.warning("connect flood: transport closed", extra={"eio_sid": eio_sid})
                sock.close_transport(flush=True)  # a DISCONNECT just written still goes out
            return
        if isinstance(data, str) and data[:1] == "1":
            # A Socket.IO DISCONNECT: the client leaves the namespace itself and will not come
            # back (an Engine.IO close of the transport gives python-socketio the same reason
            # string, but is recoverable: Node's "client namespace disconnect" vs "transport close").
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            if sid is not None:
                self._left.add(sid)
        if isinstance(data, str) and data[:1] in BINARY_PACKETS and _attachments(data) > MAX_ATTACHMENTS:
            # python-socketio keeps every announced attachment in memory until the count is reached
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None:
                self._bad_packet(sock, "a binary packet announces too many attachments")
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None:
                self._bad_packet(sock, f"socket.io packet refused: {exc}")

    def _bad_packet(self, sock: FastSocket, reason: str) -> None:
        self.metrics.error(errors.INVALID_PACKET.metric)
        log.info("malformed packet, closing the connection", extra={"eio_sid": sock.sid, "reason": reason})
        sock.close_transport(flush=True)

    # -- disconnect --------------------------------------------------------------------------------

    async def _handle_disconnect(self, eio_sid: str, namespace: str | None, reason: Any = None) -> None:
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is not None:
            self._reasons.setdefault(sid, str(reason or "client"))
        await super()._handle_disconnect(eio_sid, namespace, reason)
        sock = self.eio.sockets.get(eio_sid)
        if reason == self.reason.CLIENT_DISCONNECT and sock is not None and not (sock.closed or sock.closing):
            # The client left the namespace but kept its transport: it gets HANDSHAKE_TIMEOUT to
            # connect again (socket.io-client closes the transport itself), then it is closed.
            self.admission.handshake_started(eio_sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        self.admission.handshake_done(eio_sid)
        self._budgets.pop(eio_sid, None)

    def _socket_gone(self, sid: str) -> None:
        """Called by the manager for every disconnect, whatever its cause."""
        reason = self._reasons.pop(sid, "server")
        left = sid in self._left
        self._left.discard(sid)
        conn = self.core.forget(sid)
        if conn is None:
            return
        if conn.pid is not None:
            self.recovery.ended(conn.pid, conn.identity.user_id, may_return=not left)
        self.metrics.connection_closed(reason)
        log.info("disconnected", extra={"sid": sid, "user_id": conn.identity.user_id, "reason": reason})

    def _on_overflow(self, sock: FastSocket) -> None:
        sid = self.manager.sid_from_eio_sid(sock.sid, NAMESPACE)
        if sid is not None:
            self._reasons[sid] = errors.SLOW_CONSUMER.code
        self.metrics.error(errors.SLOW_CONSUMER.metric)
        log.warning("slow consumer: transport closed", extra={"sid": sid})


def _attachments(packet: str) -> int:
    """The attachment count a Socket.IO binary packet announces (`5<count>-...`)."""
    digits = packet[1:packet.find("-")] if "-" in packet[:12] else ""
    return int(digits) if digits.isdigit() else MAX_ATTACHMENTS + 1
