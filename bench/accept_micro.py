"""Micro-benchmark of the WebSocket accept path: what each candidate costs per handshake and per
idle connection, and what parsing a request head and unmasking a frame cost.

    python bench/accept_micro.py                     # every candidate that is installed
    python bench/accept_micro.py --clients 4000 --only native,aiohttp
    python bench/accept_micro.py --only none --gateway-trees ../main-checkout,.   # whole replicas

Candidates (each a server in a process of its own, on uvloop, pinned to CPU 0 when it can be):
- `aiohttp`: the gateway's former path, `web.WebSocketResponse` in a request handler that waits
  on `receive()` (what lives per connection: the request handler and its task, the request,
  the response, its reader and writer, the handler's coroutine);
- `native`: `gateway.ws.protocol.AcceptProtocol` with an acceptor that opens a do-nothing
  session (the gateway's path without Engine.IO);
- `picows`: picows' `ws_create_server` (Cython), when installed: it owns the listening socket
  and answers only GET upgrade requests, so it could not share the port with aiohttp.
The client (this process, on CPU 1) opens N connections one after the other, each an upgrade
request answered 101, and keeps them all open; the server's CPU time (utime + stime from /proc)
over the N handshakes and its RSS growth are divided by N. Then the micro figures: request-head
parsing (hand-written vs httptools' llhttp), unmasking (hand-written vs websockets' C speedups
vs aiohttp's C helper), all in this process. Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Candidates installed elsewhere (not dependencies of the project), searched after everything else:
# ACCEPT_MICRO_EXTRA_SITE=/tmp/candidates/lib/python3.11/site-packages
sys.path += [p for p in os.environ.get("ACCEPT_MICRO_EXTRA_SITE", "").split(":") if p]

HEAD = (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Origin: http://localhost:5173\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b"Cache-Control: no-cache\r\nPragma: no-cache\r\n\r\n")


# -- servers ---------------------------------------------------------------------------------------

def serve(kind: str, port: int) -> None:
    import uvloop

    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    uvloop.run(_serve(kind, port))


async def _serve(kind: str, port: int) -> None:
    if kind == "aiohttp":
        from aiohttp import web

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(compress=False)
            await ws.prepare(request)
            async for _ in ws:
                pass
            return ws

        app = web.Application()
        app.router.add_get("/socket.io/", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    elif kind == "native":
        from aiohttp import web

        from gateway.ws import listen
        from gateway.ws.handshake import check_upgrade, switching
        from gateway.ws.head import RequestHead

        class Idle:
            __slots__ = ()

            def on_text(self, text: str) -> None: ...
            def on_binary(self, data: bytes) -> None: ...
            def on_protocol_error(self, reason: str) -> None: ...
            def on_lost(self) -> None: ...

        class Acceptor:
            max_message = 65536

            def open(self, head: RequestHead, transport: asyncio.Transport) -> Idle:
                transport.write(switching(check_upgrade(head)))
                return Idle()

        runner = web.AppRunner(web.Application(), access_log=None)
        await runner.setup()
        assert runner.server is not None
        await listen(Acceptor(), runner.server, "127.0.0.1", port, head_timeout=10)
    elif kind == "picows":
        import picows

        class Listener(picows.WSListener):  # type: ignore[misc]
            pass

        await picows.ws_create_server(lambda request: Listener(), "127.0.0.1", port, backlog=4096,
                                      read_buffer_init_size=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the client ------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(HEAD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", key))
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed before the answer: {got!r}")
        got += chunk
    if not got.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(got[:200].decode("latin-1"))
    return sock


def measure(kind: str, clients: int, port: int) -> dict[str, float]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        for _ in range(50):  # warm up: first-use allocations, imports
            handshake(port).close()
        time.sleep(0.5)
        cpu0, rss0 = proc_cpu(server.pid), proc_rss_kib(server.pid)
        socks = [handshake(port) for _ in range(clients)]
        time.sleep(1.0)
        cpu1, rss1 = proc_cpu(server.pid), proc_rss_kib(server.pid)
        for s in socks:
            s.close()
        return {"cpu_us": (cpu1 - cpu0) * 1e6 / clients, "rss_kib": (rss1 - rss0) / clients}
    finally:
        server.terminate()
        server.wait(10)


# -- whole replicas: the gateway of a source tree, full Engine.IO + Socket.IO handshakes ---------------

GATEWAY_SECRET = "b" * 40


def sio_handshake(port: int, token: str) -> socket.socket:
    """A WebSocket session with the Socket.IO CONNECT of /notifications answered."""
    sock = handshake(port)
    connect = f'40/notifications,{{"token":"{token}"}}'.encode()
    key = os.urandom(4)
    n = len(connect)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(connect))
    sock.sendall(bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big") + key + masked if n >= 126
                 else bytes((0x81, 0x80 | n)) + key + masked)
    got = b""
    while b"40/notifications,{" not in got:
        chunk = sock.recv(4096)
        if not chunk or b"44/notifications" in got:
            raise RuntimeError(f"CONNECT refused: {got!r}")
        got += chunk
    return sock


def measure_gateway(tree: str, clients: int, port: int, log_level: str = "warning",
                    redis_url: str = "") -> dict[str, float]:
    import jwt

    env = {k: v for k, v in os.environ.items() if k not in {"PORT", "HOST", "REDIS_URL"}}
    env.update(PYTHONPATH=tree, JWT_SECRET=GATEWAY_SECRET, PORT=str(port), HOST="127.0.0.1", LOG_LEVEL=log_level,
               MAX_CONNECTIONS_PER_USER="100000")
    if redis_url:  # a Redis bus (a server of the caller's, never 127.0.0.1:6379 of someone else)
        env["REDIS_URL"] = redis_url
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "gateway"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port)).close()
                break
            time.sleep(0.1)
        now = int(time.time())
        tokens = [jwt.encode({"sub": str(i % 1000), "role": "student", "classrooms": ["1"], "iat": now,
                              "exp": now + 3600}, GATEWAY_SECRET, algorithm="HS256") for i in range(clients)]
        for t in tokens[:50]:  # warm up
            sio_handshake(port, t).close()
        time.sleep(1.0)
        cpu0, rss0 = proc_cpu(server.pid), proc_rss_kib(server.pid)
        socks = [sio_handshake(port, t) for t in tokens]
        time.sleep(1.0)
        cpu1, rss1 = proc_cpu(server.pid), proc_rss_kib(server.pid)
        for s in socks:
            s.close()
        return {"cpu_us": (cpu1 - cpu0) * 1e6 / clients, "rss_kib": (rss1 - rss0) / clients, "base_mib": rss0 / 1024}
    finally:
        server.terminate()
        server.wait(30)


# -- in-process micro figures ------------------------------------------------------------------------

def per_call_us(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) * 1e6 / number  # type: ignore[arg-type]


def micro() -> None:
    from gateway.ws.frames import FrameReader, _unmask_int, unmask
    from gateway.ws.head import head_end, parse_head, route

    def hand() -> object:
        assert route(HEAD)
        return parse_head(HEAD[:head_end(HEAD)])

    print(f"request head ({len(HEAD)} bytes), hand-written route + parse: {per_call_us(hand, 20000):.2f} µs")
    try:
        import httptools
    except ImportError:
        print("httptools: not installed")
    else:
        class Sink:
            __slots__ = ("headers", "name", "url")

            def __init__(self) -> None:
                self.headers: dict[bytes, bytes] = {}
                self.name = b""
                self.url = b""

            def on_url(self, url: bytes) -> None:
                self.url = url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers[name.lower()] = value

        def llhttp() -> object:
            sink = Sink()
            parser = httptools.HttpRequestParser(sink)
            with contextlib.suppress(httptools.HttpParserUpgrade):
                parser.feed_data(HEAD)
            return httptools.parse_url(sink.url), sink.headers

        took = per_call_us(llhttp, 20000)
        print(f"request head, httptools (llhttp) with header callbacks + parse_url: {took:.2f} µs")
    key = b"\x01\x02\x03\x04"
    try:
        from websockets.speedups import apply_mask  # type: ignore[import-not-found]
    except ImportError:
        apply_mask = None
    from aiohttp._websocket.helpers import websocket_mask as _websocket_mask
    for size in (1, 200, 65536):
        data = os.urandom(size)
        line = (f"unmask {size} B: big-integer XOR {per_call_us(lambda d=data: _unmask_int(d, key), 20000):.3f} µs, "
                f"gateway's unmask {per_call_us(lambda d=data: unmask(d, key), 20000):.3f} µs")
        if apply_mask is not None:
            line += f", websockets.speedups {per_call_us(lambda d=data: apply_mask(d, key), 20000):.3f} µs"
        if _websocket_mask is not None:
            line += (f", aiohttp's C mask {per_call_us(lambda d=data: _websocket_mask(key, bytearray(d)), 20000):.3f}"
                     " µs (with the bytearray copy it needs)")
        print(line)
    pong = bytes((0x81, 0x81)) + key + unmask(b"3", key)
    reader = FrameReader(65536)
    print(f"FrameReader.feed of a masked PONG frame: {per_call_us(lambda: reader.feed(pong), 100000):.2f} µs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve")
    p.add_argument("--port", type=int, default=18765)
    p.add_argument("--clients", type=int, default=3000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="aiohttp,native,picows")
    p.add_argument("--gateway-trees", default="",
                   help="comma-separated source trees of the gateway (e.g. main's and this branch's): each "
                        "is run as a replica (in-memory bus) and measured with full Socket.IO handshakes")
    p.add_argument("--log-level", default="warning",
                   help="the replicas' LOG_LEVEL: info includes the connection log lines")
    p.add_argument("--redis-url", default="", help="the replicas' bus (default: in memory)")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    for tree in filter(None, args.gateway_trees.split(",")):
        runs = [measure_gateway(tree, args.clients, args.port + 10 + i, args.log_level, args.redis_url)
                for i in range(args.reps)]
        cpu = sorted(r["cpu_us"] for r in runs)[len(runs) // 2]
        rss = sorted(r["rss_kib"] for r in runs)[len(runs) // 2]
        each = ", ".join(f"{r['cpu_us']:.0f} µs / {r['rss_kib']:.2f} KiB" for r in runs)
        print(f"gateway {tree}: {args.clients} Socket.IO clients on WebSocket: CPU per handshake {cpu:.0f} µs, "
              f"RSS per connection {rss:.2f} KiB (runs: {each}; RSS before the clients "
              f"{runs[0]['base_mib']:.1f} MiB)", flush=True)
    for kind in filter(None, args.only.replace("none", "").split(",")):
        if kind == "picows":
            try:
                import picows  # noqa: F401
            except ImportError:
                print("picows: not installed")
                continue
        runs = [measure(kind, args.clients, args.port + i) for i in range(args.reps)]
        cpu = sorted(r["cpu_us"] for r in runs)[len(runs) // 2]
        each = ", ".join(f"{r['cpu_us']:.0f}" for r in runs)
        rss = sorted(r["rss_kib"] for r in runs)[len(runs) // 2]
        print(f"{kind}: {args.clients} idle connections: server CPU per handshake {cpu:.0f} µs (median of {len(runs)}: "
              f"{each}), RSS per connection {rss:.2f} KiB", flush=True)
    micro()


if __name__ == "__main__":
    main()
