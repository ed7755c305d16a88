"""The app factory: one replica's parts, built from `Settings` and wired together.

Nothing here lives at module level; tests build as many replicas in one process as they like.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.bus.contract import Backend
from gateway.bus.memory_bus import MemoryBackend
from gateway.config import Settings
from gateway.delivery.core import DeliveryCore
from gateway.delivery.recovery import Recovery
from gateway.delivery.service import WebSocketService
from gateway.http.emit import EmitEndpoint
from gateway.http.jwks import jwks_lifecycle
from gateway.metrics import Metrics
from gateway.policy.admission import Admission
from gateway.policy.auth import Authenticator
from gateway.sio.native import NativeAcceptor
from gateway.sio.server import GatewayServer
from publisher.envelope import BusNames
from publisher.opsurface import routes as ops_routes

log = logging.getLogger("gateway")

DRAIN_STEP = 0.25


@dataclass
class Gateway:
    """Everything one replica is made of."""

    settings: Settings
    replica_id: str
    metrics: Metrics
    backend: Backend
    core: DeliveryCore
    sio: GatewayServer
    service: WebSocketService
    admission: Admission
    auth: Authenticator

    @property
    def draining(self) -> bool:
        return self.admission.draining

    def not_ready(self) -> str | None:
        """Why this replica should get no new clients, or None when it should."""
        if self.admission.draining:
            return "draining"
        if not self.backend.connected:
            return "bus_disconnected"
        return self.auth.not_ready()

    async def drain(self, seconds: float) -> None:
        """Let every client go, in batches spread over `seconds`, by closing its transport:
        socket.io-client reconnects by itself (to another replica) and recovers there."""
        self.admission.draining = True
        conns = list(self.core.registry.by_sid.values())
        log.info("draining", extra={"connections": len(conns), "seconds": seconds})
        steps = max(1, int(seconds / DRAIN_STEP))
        batch = max(1, math.ceil(len(conns) / steps))
        for i in range(0, len(conns), batch):
            for conn in conns[i:i + batch]:
                conn.eio.close_transport(flush=True)
            await asyncio.sleep(DRAIN_STEP if seconds > 0 else 0)
        # let the disconnect handlers record the sessions' end before the bus closes
        for _ in range(40):
            if not self.core.registry.by_sid:
                break
            await asyncio.sleep(0.05)


    def close_websockets(self) -> None:
        """Cut every WebSocket still open at shutdown (aiohttp closes only the connections it
        has; the native ones are not among them)."""
        for sock in list(self.sio.eio.sockets.values()):
            if sock.is_websocket:
                sock.close_transport()


GATEWAY = web.AppKey("gateway", Gateway)


def native_acceptor(gateway: Gateway) -> NativeAcceptor:
    """What decides on the WebSocket requests the listener accepts itself (`gateway.ws`)."""
    if gateway.settings.dev:  # the console's page may open sockets to the replica that served it
        from gateway.http.console import own_page_origin

        return NativeAcceptor(gateway.sio.eio, own_origin=own_page_origin)
    return NativeAcceptor(gateway.sio.eio)


def build(settings: Settings) -> Gateway:
    replica_id = secrets.token_hex(6)
    metrics = Metrics()
    names = BusNames(settings.channel_prefix, settings.key_prefix)
    backend: Backend
    if settings.redis_url:
        from gateway.bus.redis_bus import RedisBackend

        backend = RedisBackend(settings.redis_url, names=names, replica_id=replica_id,
                               history_max_len=settings.history_max_len, window_s=settings.recovery_window,
                               max_payload_bytes=settings.max_payload_bytes, metrics=metrics)
    else:
        backend = MemoryBackend(history_max_len=settings.history_max_len, window_s=settings.recovery_window)
    admission = Admission(settings, metrics)
    auth = Authenticator(settings)
    sio = GatewayServer(settings, backend, auth, Recovery(backend, settings.recovery_window), admission, metrics)
    core = sio.core
    metrics.active = lambda: len(core)
    metrics.bus_up = lambda: backend.connected
    metrics.subscriptions = lambda: len(core.registry.rooms)
    metrics.draining = lambda: admission.draining
    return Gateway(settings, replica_id, metrics, backend, core, sio,
                   WebSocketService(core, settings.max_payload_bytes), admission, auth)


def create_app(settings: Settings) -> web.Application:
    gateway = build(settings)
    app = web.Application(client_max_size=settings.max_payload_bytes + 4096)
    app[GATEWAY] = gateway
    gateway.sio.attach(app, socketio_path="socket.io")
    app.add_routes(ops_routes(gateway.metrics, gateway.not_ready))
    if settings.publish_api_key:
        endpoint = EmitEndpoint(gateway.core, settings.publish_api_key, settings.max_payload_bytes, gateway.metrics)
        app.router.add_post("/api/emit", endpoint.handle)
    if settings.dev:
        from gateway.http import console

        console.add_routes(app, gateway.settings)
    app.cleanup_ctx.append(jwks_lifecycle(gateway.auth))  # keys first: a replica listens able to verify
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.backend.start(gateway.core)
    gateway.sio.start_sweeper()
    log.info("replica started", extra={"replica": gateway.replica_id, "bus": gateway.backend.name})
    yield
    await gateway.sio.stop_sweeper()
    await gateway.backend.close()
