"""The Socket.IO server: python-socketio, with the namespace's protocol decisions made here.

python-socketio parses packets and keeps sid bookkeeping; this subclass decides what a CONNECT,
an EVENT and a disconnect mean for `/notifications`: authentication and recovery on CONNECT
(the reply waits until the socket's subscriptions are confirmed, so nothing sent after the
client sees `connect` is missed), an allow-list and a rate limit on client events (anything
else is refused with an ack and never reaches application code), and the socket's session,
presence and rooms on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
import socketio
from socketio import packet as sio_packet

from gateway.config import Settings
from gateway.delivery.core import NAMESPACE, DeliveryCore, HistoryLost
from gateway.delivery.recovery import RECOVERED, Recovery
from gateway.delivery.registry import Conn
from gateway.policy.admission import Admission
from gateway.policy.auth import Authenticator, AuthError, extract_token
from gateway.policy.ratelimit import TokenBucket
from gateway.policy.rooms import Identity, rooms_for
from gateway.sio.engine import GatewayEngineIO
from gateway.sio.packets import FastPacket
from gateway.sio.socket import FastSocket

log = logging.getLogger("gateway.socket")

SUBSCRIBE_EVENT = "subscribe:notifications"
BINARY_PACKETS = frozenset({"5", "6"})  # Socket.IO BINARY_EVENT, BINARY_ACK
MAX_ATTACHMENTS = 4  # no event of this namespace needs more (each is up to MAX_PAYLOAD_BYTES)
MAX_SUBSCRIBE_PAYLOAD = 4096
SWEEP_EVERY = 0.25


class GatewayServer(socketio.AsyncServer):  # type: ignore[misc]
    def __init__(self, settings: Settings, core: DeliveryCore, manager: Any, authenticator: Authenticator,
                 recovery: Recovery, admission: Admission, metrics: Any) -> None:
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
        self.core = core
        self.auth = authenticator
        self.recovery = recovery
        self.admission = admission
        self.metrics = metrics
        self.eio.send_buffer_limit = settings.send_buffer_limit
        self.eio.allowed_origins = None if origins == "*" else frozenset(origins)
        self.eio.admission = admission
        self.eio.bad_packet_hook = self._bad_packet
        core.kick_handler = self.kick
        core.batch_begin, core.batch_end = self.eio.begin_batch, self.eio.end_batch
        core.on_rooms_changed = self._save_session
        self.bucket = TokenBucket(settings.rate_limit_events, settings.rate_limit_burst)
        self._reasons: dict[str, str] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _engineio_server_class(self) -> type[GatewayEngineIO]:
        return GatewayEngineIO

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
            await self.kick(conn, "token_expired")
        for eio_sid in self.admission.stale_handshakes(time.monotonic()):
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None and self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is None:
                self.metrics.error("handshake_timeout")
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
        environ = self.environ.get(eio_sid, {})
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is None:
            return
        try:
            identity = self.auth.authenticate(extract_token(data, environ.get("HTTP_AUTHORIZATION")))
        except AuthError as exc:
            log.info("handshake refused", extra={"code": exc.code, "reason": exc.detail})
            self.metrics.handshake(exc.code)
            await self._refuse(eio_sid, exc.code)
            return
        if not self.admission.user_may_connect(identity.user_id,
                                               self.core.registry.user_count(f"user:{identity.user_id}")):
            self.metrics.handshake("too_many_connections")
            await self._refuse(eio_sid, "too_many_connections", message="too_many_connections")
            return
        self.admission.handshake_done(eio_sid)
        try:
            await self._connect(eio_sid, eio_socket, identity, data)
        finally:
            self.admission.connect_done(identity.user_id)  # counted by the registry from now on

    async def _connect(self, eio_sid: str, eio_socket: FastSocket, identity: Identity, data: Any) -> None:
        restorable = None
        if self.recovery.enabled and isinstance(data, dict) and data.get("pid") is not None:
            restorable, outcome = await self.recovery.find(identity, data.get("pid"), data.get("offset"))
            if restorable is None:
                self.metrics.recovery(outcome)
        if restorable is not None:
            try:
                await self._connect_restored(eio_sid, eio_socket, identity, restorable)
            except HistoryLost:
                self.metrics.recovery("history_lost")
            else:
                return
        await self._connect_fresh(eio_sid, eio_socket, identity)

    async def _refuse(self, eio_sid: str, code: str, message: str = "unauthorized") -> None:
        await self._send_packet(eio_sid, self.packet_class(
            sio_packet.CONNECT_ERROR, data={"message": message, "data": {"code": code}}, namespace=NAMESPACE))

    def _register(self, sid: str, eio_sid: str, eio_socket: FastSocket, identity: Identity,
                  pid: str | None, last_key: int) -> Conn:
        self.manager.basic_enter_room(sid, NAMESPACE, None, eio_sid=eio_sid)
        self.manager.basic_enter_room(sid, NAMESPACE, sid, eio_sid=eio_sid)
        conn = Conn(sid, eio_sid, identity, eio_socket, pid, last_key)
        self.core.connecting.add(sid)
        expires = identity.exp + self.auth.leeway if identity.exp is not None else None
        self.core.registry.add(conn, expires)
        eio_socket.on_overflow = self._on_overflow
        if self.core.registry.user_count(f"user:{identity.user_id}") == 0:
            self.core.backend.set_online(identity.user_id, True)
        return conn

    async def _connect_fresh(self, eio_sid: str, eio_socket: FastSocket, identity: Identity) -> None:
        sid = self.eio.generate_id()
        pid = self.recovery.new_pid() if self.recovery.enabled else None
        conn = self._register(sid, eio_sid, eio_socket, identity, pid, 0)
        rooms = rooms_for(identity)
        start = await self.core.attach_rooms(conn, rooms)
        if not self._still_there(conn):
            return
        if pid is not None:
            self.recovery.save(pid, sid, identity, list(conn.rooms), start)
        await self._accept(conn)
        self.metrics.handshake("ok")

    async def _connect_restored(self, eio_sid: str, eio_socket: FastSocket, identity: Identity,
                                restorable: Any) -> None:
        stale = self.core.registry.get(restorable.sid)
        if stale is not None:  # the old transport here has not noticed it is dead yet
            stale.pid = None
            self.core.detach(stale.sid)
            stale.eio.close_transport()
        conn = self._register(restorable.sid, eio_sid, eio_socket, identity, restorable.pid,
                              restorable.since.key)
        try:
            await self.core.recover_rooms(conn, restorable.spans)
        except HistoryLost:
            self._unregister(conn)
            raise
        if not self._still_there(conn):
            return
        self.recovery.save(restorable.pid, conn.sid, identity, list(conn.rooms), None,
                           created_ms=restorable.created_ms, start_offset=restorable.since.offset,
                           joined_json=_joined_json(restorable.spans, restorable.since))
        await self._accept(conn)
        self.metrics.recovery(RECOVERED)
        self.metrics.handshake("recovered")

    def _still_there(self, conn: Conn) -> bool:
        """The transport may have gone while we waited for Redis."""
        if conn.eio.closed or self.core.registry.get(conn.sid) is not conn:
            self._unregister(conn)
            return False
        return True

    async def _accept(self, conn: Conn) -> None:
        """The CONNECT reply, then what waited while the socket was attached, in order."""
        reply: dict[str, str] = {"sid": conn.sid}
        if conn.pid is not None:
            reply["pid"] = conn.pid
        await self._send_packet(conn.eio_sid, self.packet_class(sio_packet.CONNECT, reply, namespace=NAMESPACE))
        self.core.connecting.discard(conn.sid)
        conn.attach([], self.metrics)
        log.info("connected", extra={"sid": conn.sid, "user_id": conn.identity.user_id,
                                     "transport": "websocket" if conn.eio.is_websocket else "polling"})

    def _unregister(self, conn: Conn) -> None:
        self.core.connecting.discard(conn.sid)
        if self.core.registry.get(conn.sid) is conn:
            self.core.detach(conn.sid)
            if self.core.registry.user_count(f"user:{conn.identity.user_id}") == 0:
                self.core.backend.set_online(conn.identity.user_id, False)
        self.manager.basic_disconnect(conn.sid, NAMESPACE)

    def _save_session(self, conn: Conn, room: str, change: str, at: Any) -> None:
        """A connected socket's rooms changed: the session record follows."""
        if conn.pid is not None:
            self.recovery.rooms_changed(conn.pid, list(conn.rooms), room, change, at)

    # -- EVENT ------------------------------------------------------------------------------------

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]) -> None:
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        conn = self.core.registry.get(sid) if sid is not None else None
        if conn is None:
            return
        event = data[0] if data else None
        if not self.bucket.take(conn):
            conn.refused += 1
            self.metrics.error("rate_limited")
            await self._ack(eio_sid, id, {"ok": False, "error": "rate_limited"})
            if conn.refused >= self.settings.rate_limit_disconnect_after:
                log.warning("disconnecting a flooding client", extra={"sid": sid, "user_id": conn.identity.user_id})
                await self.kick(conn, "rate_limited")
            return
        if event == SUBSCRIBE_EVENT:
            if len(data) > 2 or len(repr(data[1:])) > MAX_SUBSCRIBE_PAYLOAD:
                self.metrics.error("invalid_payload")
                await self._ack(eio_sid, id, {"ok": False, "error": "invalid_payload"})
                return
            await self._ack(eio_sid, id, {"ok": True, "rooms": list(conn.rooms)})
            return
        self.metrics.error("unknown_event")
        log.info("unknown client event refused", extra={"sid": sid, "event": str(event)[:64]})
        await self._ack(eio_sid, id, {"ok": False, "error": "unknown_event"})

    async def _ack(self, eio_sid: str, id: int | None, payload: dict[str, Any]) -> None:
        if id is None:
            return
        await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=NAMESPACE, id=id, data=[payload]))

    async def _handle_ack(self, eio_sid: str, namespace: str | None, id: int, data: Any) -> None:
        """The server asks for no acks: a client's ACK is ignored, but spends from the same
        bucket as events, so a stream of them ends like a flood of events."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        conn = self.core.registry.get(sid) if sid is not None else None
        if conn is not None and not self.bucket.take(conn):
            conn.refused += 1
            self.metrics.error("rate_limited")
            if conn.refused >= self.settings.rate_limit_disconnect_after:
                await self.kick(conn, "rate_limited")

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
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
        self.metrics.error("invalid_packet")
        log.info("malformed packet, closing the connection", extra={"eio_sid": sock.sid, "reason": reason})
        sock.close_transport()

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

    def socket_gone(self, sid: str) -> None:
        """Called by the manager for every disconnect, whatever its cause."""
        reason = self._reasons.pop(sid, "server")
        conn = self.core.registry.get(sid)
        if conn is None:
            return
        self.core.detach(sid)
        user = conn.identity.user_id
        if self.core.registry.user_count(f"user:{user}") == 0:
            self.core.backend.set_online(user, False)
        if conn.pid is not None:
            self.recovery.ended(conn.pid)
        self.metrics.connection_closed(reason)
        log.info("disconnected", extra={"sid": sid, "user_id": user, "reason": reason})

    async def kick(self, conn: Conn, reason: str) -> None:
        """A Socket.IO DISCONNECT: the client does not reconnect by itself."""
        if self.core.registry.get(conn.sid) is not conn:
            return
        self._reasons[conn.sid] = reason
        if reason == "kicked":
            conn.pid = None  # the publisher deleted its sessions: nothing to save on the way out
        await self.disconnect(conn.sid, namespace=NAMESPACE)
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, conn.eio.close_transport)

    def _on_overflow(self, sock: FastSocket) -> None:
        sid = self.manager.sid_from_eio_sid(sock.sid, NAMESPACE)
        if sid is not None:
            self._reasons[sid] = "slow_consumer"
        self.metrics.error("slow_consumer")
        log.warning("slow consumer: transport closed", extra={"sid": sid})


def _joined_json(spans: list[Any], since: Any) -> str:
    """The join positions to keep in a restored session: those later than its offset."""
    joined = {room: start.stream_id for room, start, end in spans
              if end is None and room and start.key > since.key}
    return orjson.dumps(joined).decode() if joined else "{}"


def _attachments(packet: str) -> int:
    """The attachment count a Socket.IO binary packet announces (`5<count>-...`)."""
    digits = packet[1:packet.find("-")] if "-" in packet[:12] else ""
    return int(digits) if digits.isdigit() else MAX_ATTACHMENTS + 1
