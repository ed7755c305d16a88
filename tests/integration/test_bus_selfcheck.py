"""A pub/sub connection that stays open but stops delivering is noticed and repaired.

A TCP proxy between the replica and Redis "freezes": it keeps every connection open and
silently drops the bytes, the way a broken NAT or a stuck load balancer does. The replica's
self-check (PING on the subscriber, probes through Redis) must call the bus down, reconnect
once the path works again, and deliver events published afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from publisher import Publisher
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

SECRET = "s" * 40


class FreezingProxy:
    """loopback:port -> Redis; `freeze()` swallows traffic both ways without closing anything."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.frozen = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.ready = threading.Event()
        self.writers: list[asyncio.StreamWriter] = []

    def start(self) -> FreezingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(5)
        return self

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.frozen.is_set():
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    async def _shutdown(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self.writers), return_exceptions=True)
        await self.server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close every connection and the loop itself (its self-pipe is a socket pair)."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def proxied_gateway(redis_server: RedisServer) -> Iterator[tuple[GatewayProcess, FreezingProxy]]:
    proxy = FreezingProxy(redis_server.port).start()
    gateway = GatewayProcess({"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "JWT_SECRET": SECRET,
                              "LOG_FORMAT": "text"})
    try:
        gateway.start().wait_ready()
        yield gateway, proxy
    finally:
        gateway.stop()
        proxy.stop()


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(gateway: GatewayProcess, name: str) -> float:
    _, text = gateway.http_get("/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_frozen_bus_is_noticed_and_repaired(
    proxied_gateway: tuple[GatewayProcess, FreezingProxy], redis_server: RedisServer,
) -> None:
    gateway, proxy = proxied_gateway
    assert gateway.http_get("/readyz")[0] == 200
    proxy.frozen.set()
    _wait(lambda: gateway.http_get("/readyz")[0] == 503, 20, "readiness to fail on a deaf bus")
    proxy.frozen.clear()
    _wait(lambda: gateway.http_get("/readyz")[0] == 200, 20, "the bus to be repaired")
    assert _metric(gateway, "bus_selfcheck_repairs_total") >= 1

    # events published after the repair reach a client of this replica
    token = make_token(SECRET, "7")
    base = f"{gateway.url}/socket.io/?EIO=4&transport=polling"
    sid = _polling_connect(base, token)
    pub = Publisher(redis_server.url)
    try:
        pub.emit("coins:earned", {"amount": 1, "reason": "r", "newBalance": 1}, user="7").result()
    finally:
        pub.close()
    assert '"coins:earned"' in _http(f"{base}&sid={sid}")


def _http(url: str, data: str | None = None) -> str:
    request = urllib.request.Request(url, data=data.encode() if data is not None else None,
                                     method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode())


def _polling_connect(base: str, token: str) -> str:
    """An Engine.IO polling session with a Socket.IO CONNECT: enough to receive one event."""
    sid = str(orjson.loads(_http(base)[1:])["sid"])
    _http(f"{base}&sid={sid}", "40/notifications," + orjson.dumps({"token": token}).decode())
    reply = _http(f"{base}&sid={sid}")
    assert reply.startswith("40/notifications,"), reply
    return sid
