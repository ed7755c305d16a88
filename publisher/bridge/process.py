"""The bridge as a process: its parts wired together, signals, and a planned stop that hands
the lease over before the process ends (`Bridge.hand_over`), so a rolling update loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from publisher.async_client import AsyncPublisher
from publisher.bridge.config import BridgeSettings
from publisher.bridge.lease import ACTIVE, Lease
from publisher.bridge.runner import Bridge
from publisher.bridge.server import BridgeMetrics, routes, setup_logging
from publisher.transports import async_transport

log = logging.getLogger("publisher.bridge")


async def serve(settings: BridgeSettings, stop: asyncio.Event | None = None) -> None:
    """Run the bridge until `stop` is set (or SIGTERM / SIGINT)."""
    setup_logging(settings.log_level)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics = BridgeMetrics()
    pub = AsyncPublisher(settings.redis_url, channel_prefix=settings.channel_prefix,
                         key_prefix=settings.key_prefix, history_max_len=settings.history_max_len,
                         recovery_window_s=settings.recovery_window_s)
    lease_transport = async_transport(settings.redis_url)
    lease = Lease(lease_transport, settings.lease_key, settings.bridge_id, ttl_ms=settings.lease_ttl_ms,
                  renew_ms=settings.lease_renew_ms, on_role=metrics.set_role)
    bridge = Bridge(settings, pub, lease, metrics)
    app = web.Application()
    app.add_routes(routes(metrics, bridge.not_ready))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("bridge started", extra={"settings": settings.public_view()})
    tasks = {name: loop.create_task(coro, name=name) for name, coro in (
        ("lease", lease.run(bridge.wake_lease, bridge.fenced)), ("listen", bridge.listen()),
        ("work", bridge.work()))}
    try:
        done = loop.create_task(stop.wait())
        await asyncio.wait([done, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        for task in tasks.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await _stop(bridge, tasks)
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if lease.role == ACTIVE:
            await lease.release()
        await runner.cleanup()
        await pub.close()
        await lease_transport.close()
        log.info("bridge stopped")


async def _stop(bridge: Bridge, tasks: dict[str, asyncio.Task[None]]) -> None:
    """A planned stop: the lease renewals end first; a holder hands the lease over while still
    reading and delivering, then stops reading and carries out what it read."""
    tasks["lease"].cancel()
    await asyncio.gather(tasks["lease"], return_exceptions=True)
    if bridge.lease.active():
        await bridge.hand_over()
    tasks["listen"].cancel()
    await asyncio.gather(tasks["listen"], return_exceptions=True)
    await bridge.drain(bridge.lease.ttl_s)
