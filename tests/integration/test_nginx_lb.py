"""deploy/nginx/nginx.conf, run by the real nginx, in front of two backends on loopback.

It proves what Socket.IO needs from the load balancer: WebSocket upgrades pass, the requests of
one client (long-polling GETs and POSTs) stick to one backend, different clients spread over
the backends, and a client whose backend went away or is draining (503) is served by another.

The backends are tiny aiohttp apps for now. `NginxLB.start(ports)` takes any loopback ports, so
the real gateway replicas (and socket.io-client) can be put behind the same nginx later.
Clients get distinct source addresses from 127.0.0.0/8 (Linux routes all of it to `lo`),
because the configuration hashes the client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.ports import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if Path(candidate).exists():
            return candidate
    return None


NGINX = _find_nginx()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NGINX is None,
        reason="nginx is not installed (apt-get install -y nginx-light); .ci/run installs it",
    ),
]

UPSTREAM_BLOCK = re.compile(
    r"(# upstream-servers:begin\n)(.*?)(\s*# upstream-servers:end)", re.DOTALL
)
LISTEN = re.compile(r"^(\s*)listen 8080;", re.MULTILINE)


class NginxLB:
    """The real nginx with deploy/nginx/nginx.conf, its upstreams pointed at loopback ports.

    Only the upstream server addresses and the listen address are changed (plus temp paths, so
    that nothing outside its own directory is written); everything else is the shipped file.
    Started with `start(ports)`, stopped by PID with `stop()`.
    """

    def __init__(self, conf: Path = NGINX_CONF) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed")
        self.conf = conf
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ngw-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def render(self, ports: Sequence[int], host: str = "127.0.0.1") -> str:
        text = self.conf.read_text(encoding="utf-8")
        block = UPSTREAM_BLOCK.search(text)
        if block is None:
            raise ValueError(f"{self.conf}: no `# upstream-servers:begin/end` markers")
        # Keep the parameters the shipped servers have (max_fails, fail_timeout...).
        params = re.search(r"^\s*server\s+\S+\s*([^;]*);", block.group(2), re.MULTILINE)
        extra = f" {params.group(1).strip()}" if params and params.group(1).strip() else ""
        servers = "".join(f"        server {host}:{p}{extra};\n" for p in ports)
        text = text[: block.start(2)] + servers + text[block.end(2) :]
        text, listens = LISTEN.subn(rf"\1listen 127.0.0.1:{self.port};", text)
        if listens != 1:
            raise ValueError(f"{self.conf}: expected exactly one `listen 8080;`, found {listens}")
        temp = "".join(
            f"    {kind}_temp_path {self.dir / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return text.replace("http {\n", "http {\n" + temp, 1)

    def start(self, ports: Sequence[int], host: str = "127.0.0.1") -> NginxLB:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.render(ports, host), encoding="utf-8")
        assert NGINX is not None
        cmd = [NGINX, "-e", "stderr", "-p", f"{self.dir}/", "-c", str(conf),
               "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"]
        access, errors = self.dir / "access.log", self.dir / "error.log"
        with access.open("wb") as out, errors.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            wait_port(self.port, 10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.logs()}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
        return self

    def logs(self) -> str:
        parts = []
        for name in ("error.log", "access.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM) of the master by PID; SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Backend:
    """A stand-in replica: /readyz, a WebSocket echo, and JSON saying who answered.

    `draining = True` makes it answer 503 to new requests, as a gateway does after SIGTERM.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.draining = False
        self.requests = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _request: web.Request) -> web.Response:
        return web.Response(status=503 if self.draining else 200, text=self.name)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.Response(status=503, text="draining")
        self.requests += 1
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_json({"backend": self.name})
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws
        body = await request.text()
        # A long-poll: hold the response like Engine.IO does while it has nothing to send.
        await asyncio.sleep(float(request.query.get("hold", "0")))
        return web.json_response({
            "backend": self.name,
            "method": request.method,
            "body": body,
            "forwarded_for": request.headers.get("X-Forwarded-For", ""),
        })


class Client:
    """One client machine: all its connections come from `address` (a 127.x.y.z)."""

    def __init__(self, address: str) -> None:
        self.address = address
        # A new TCP connection per request: stickiness must come from nginx, not from reuse.
        connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
        self.session = aiohttp.ClientSession(connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self.session.close()

    async def request(self, lb: NginxLB, method: str = "GET", query: str = "",
                      data: str | None = None) -> dict[str, Any]:
        url = f"{lb.url}/socket.io/?EIO=4&transport=polling{query}"
        async with self.session.request(method, url, data=data) as resp:
            assert resp.status == 200, f"{method} {url}: {resp.status}\n{lb.logs()}"
            result: dict[str, Any] = await resp.json()
            return result

    async def backend(self, lb: NginxLB) -> str:
        return str((await self.request(lb))["backend"])


@contextlib.asynccontextmanager
async def clients(addresses: Sequence[str]) -> AsyncIterator[list[Client]]:
    opened = [Client(a) for a in addresses]
    try:
        yield opened
    finally:
        for c in opened:
            await c.close()


def loopback(i: int) -> str:
    return f"127.0.{i // 250}.{2 + i % 250}"


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await Backend("a").start(), await Backend("b").start()]
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


@pytest.fixture
def lb(backends: list[Backend]) -> Iterator[NginxLB]:
    nginx = NginxLB().start([b.port for b in backends])
    try:
        yield nginx
    finally:
        nginx.cleanup()


async def test_websocket_upgrade_passes_through(lb: NginxLB) -> None:
    connector = aiohttp.TCPConnector(local_addr=(loopback(0), 0))
    url = f"{lb.ws_url}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession(connector=connector) as session, session.ws_connect(
        url, timeout=aiohttp.ClientWSTimeout(ws_close=5)
    ) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["backend"] in {"a", "b"}
        for text in ("2probe", "42/notifications,[\"subscribe:notifications\"]"):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=5) == text
        # Idle for a moment, then still usable: nothing times the socket out early.
        await asyncio.sleep(1.5)
        await ws.send_str("3")
        assert await ws.receive_str(timeout=5) == "3"


async def test_websocket_and_polling_of_one_client_reach_the_same_backend(lb: NginxLB) -> None:
    """Engine.IO's polling -> WebSocket upgrade: the upgrade must find the polling session."""
    async with clients([loopback(1)]) as (client,):
        polled = await client.backend(lb)
        async with client.session.ws_connect(
            f"{lb.ws_url}/socket.io/?EIO=4&transport=websocket&sid=x"
        ) as ws:
            assert (await ws.receive_json(timeout=5))["backend"] == polled


async def test_polling_requests_of_one_client_stick_to_one_backend(lb: NginxLB) -> None:
    async with clients([loopback(i) for i in range(3)]) as group:
        for client in group:
            seen = set()
            for i in range(6):
                if i % 2:
                    answer = await client.request(lb, "POST", data=f"4{i}")
                    assert answer["body"] == f"4{i}"
                else:
                    answer = await client.request(lb)
                seen.add(answer["backend"])
                assert answer["forwarded_for"] == client.address
            assert len(seen) == 1, f"{client.address} was served by {seen}"


async def test_a_post_during_a_held_long_poll_reaches_the_same_backend(lb: NginxLB) -> None:
    async with clients([loopback(4)]) as (client,):
        poll = asyncio.create_task(client.request(lb, query="&hold=1"))
        await asyncio.sleep(0.2)
        post = await client.request(lb, "POST", data="42[\"x\"]")
        held = await poll
        assert held["backend"] == post["backend"]


async def test_different_clients_spread_over_both_backends(
    lb: NginxLB, backends: list[Backend]
) -> None:
    async with clients([loopback(i) for i in range(32)]) as group:
        served = [await c.backend(lb) for c in group]
    assert set(served) == {"a", "b"}, served
    assert all(b.requests > 0 for b in backends)


async def test_clients_of_a_stopped_backend_are_served_by_the_other(
    lb: NginxLB, backends: list[Backend]
) -> None:
    by_name = {b.name: b for b in backends}
    async with clients([loopback(i) for i in range(16)]) as group:
        pinned = {c.address: await c.backend(lb) for c in group}
        victim = pinned[group[0].address]
        await by_name[victim].stop()
        for client in group:
            assert await client.backend(lb) != victim
        # Clients of the surviving backend did not move.
        for client in group:
            if pinned[client.address] != victim:
                assert await client.backend(lb) == pinned[client.address]


async def test_a_draining_backend_503_sends_new_requests_to_the_other(
    lb: NginxLB, backends: list[Backend]
) -> None:
    by_name = {b.name: b for b in backends}
    async with clients([loopback(i) for i in range(16)]) as group:
        pinned = {c.address: await c.backend(lb) for c in group}
        victim = pinned[group[0].address]
        by_name[victim].draining = True
        for client in group:
            assert await client.backend(lb) != victim


def test_render_changes_only_addresses() -> None:
    nginx = NginxLB()
    try:
        rendered = nginx.render([1111, 2222])
    finally:
        nginx.cleanup()
    assert "server 127.0.0.1:1111 max_fails=1 fail_timeout=2s;" in rendered
    assert "server 127.0.0.1:2222 max_fails=1 fail_timeout=2s;" in rendered
    upstreams = UPSTREAM_BLOCK.search(rendered)
    assert upstreams is not None
    assert "gateway-1" not in upstreams.group(2)
    assert f"listen 127.0.0.1:{nginx.port};" in rendered
    assert "hash $remote_addr consistent;" in rendered

