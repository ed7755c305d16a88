"""The listening socket's dispatch (gateway/ws/protocol.py), over real TCP connections: what is
not a native WebSocket request reaches aiohttp intact (pipelined requests, bodies, a request
line in pieces, a candidate the acceptor leaves to aiohttp); a WebSocket request reaches the
acceptor and its frames the session; a malformed head gets a 400 and the listener keeps serving."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.ws import listen
from gateway.ws import protocol as ws_protocol
from gateway.ws.frames import BINARY, CLOSE, PING, PONG, TEXT
from gateway.ws.handshake import accept_key, check_upgrade, http_response, switching
from gateway.ws.head import RequestHead
from tests.unit.ws_wire import client_frame

WS_HEAD = ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "X-Test: {x}\r\n\r\n")


def ws_head(x: str = "native") -> bytes:
    return WS_HEAD.format(x=x).encode()


@dataclass
class Session:
    texts: list[str] = field(default_factory=list)
    binaries: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def on_text(self, text: str) -> None:
        self.texts.append(text)

    def on_binary(self, data: bytes) -> None:
        self.binaries.append(data)

    def on_protocol_error(self, reason: str) -> None:
        self.errors.append(reason)

    def on_lost(self, transport: asyncio.Transport) -> None:
        self.lost.set()


class Acceptor:
    """Opens a session when X-Test says `native`, refuses on `refuse`, leaves the rest to aiohttp."""

    max_message = 1024

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.transports: list[asyncio.Transport] = []

    def open(self, head: RequestHead, transport: asyncio.Transport) -> bytes | Session | None:
        what = head.header("x-test")
        if what == "refuse":
            return http_response(429, b'{"error":"no"}', headers={"Retry-After": "1"})
        if what != "native":
            return None
        transport.write(switching(check_upgrade(head)))
        session = Session()
        self.sessions.append(session)
        self.transports.append(transport)
        return session


@dataclass
class Listener:
    port: int
    acceptor: Acceptor
    seen: list[tuple[str, str, bytes]]

    async def exchange(self, *writes: bytes) -> bytes:
        """Send `writes` (one write each) and read until the server closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        for data in writes:
            writer.write(data)
            await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return got


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    seen: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path_qs, body))
        return web.Response(text=f"aiohttp {request.method} {request.path_qs} {len(body)} "
                                 f"{request.headers.get('X-Test', '')}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    acceptor = Acceptor()
    server = await listen(acceptor, runner.server, "127.0.0.1", 0, head_timeout=0.5)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Listener(port, acceptor, seen)
    finally:
        server.close()
        await runner.cleanup()


async def test_pipelined_requests_with_a_body_reach_aiohttp_intact(listener: Listener) -> None:
    body = b'{"event":"x","data":"' + b"y" * 3000 + b'"}'
    requests = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /api/emit?a=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
                b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = await listener.exchange(requests)
    assert got.count(b"HTTP/1.1 200") == 3
    assert listener.seen == [("GET", "/healthz", b""), ("POST", "/api/emit?a=1", body),
                             ("GET", "/socket.io/?EIO=4&transport=polling", b"")]


async def test_a_request_line_in_pieces_reaches_aiohttp(listener: Listener) -> None:
    request = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = await listener.exchange(*[request[i:i + 1] for i in range(0, 20)], request[20:])
    assert got.startswith(b"HTTP/1.1 200")
    assert listener.seen == [("GET", "/socket.io/?EIO=4&transport=polling", b"")]


async def test_a_websocket_candidate_the_acceptor_declines_reaches_aiohttp_whole(listener: Listener) -> None:
    got = await listener.exchange(ws_head("aiohttp").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert listener.seen == [("GET", "/socket.io/?EIO=4&transport=websocket", b"")]
    assert b"aiohttp GET /socket.io/?EIO=4&transport=websocket 0 aiohttp" in got


async def test_a_refusal_is_answered_and_the_connection_closed(listener: Listener) -> None:
    got = await listener.exchange(ws_head("refuse"))
    assert got.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Retry-After: 1\r\n" in got
    assert got.endswith(b'{"error":"no"}')
    assert listener.seen == []


@pytest.mark.parametrize("head", [
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket  HTTP/1.1\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nX-Test: native\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nX-Test: native\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ws_head().replace(b"HTTP/1.1", b"HTTP/1.0"),
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nX-A: \x01\r\n\r\n",
])
async def test_a_malformed_head_gets_a_400_and_the_listener_keeps_serving(listener: Listener, head: bytes) -> None:
    got = await listener.exchange(head)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got
    assert b'"reason":' in got
    again = await listener.exchange(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200")


async def test_a_head_too_large_gets_a_431(listener: Listener) -> None:
    got = await listener.exchange(ws_head()[:-2] + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 431")


async def test_a_silent_connection_is_closed_after_the_head_timeout(listener: Listener) -> None:
    assert await listener.exchange(b"GET /socket.io/?EIO=4&transport=web") == b""
    assert await listener.exchange() == b""


async def test_a_websocket_is_answered_101_and_its_frames_reach_the_session(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    # the first frames right behind the request, in the same write
    writer.write(ws_head() + client_frame(TEXT, b"40/notifications,{}") + client_frame(PING, b"hi"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key('dGhlIHNhbXBsZSBub25jZQ==')}".encode() in head
    assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes((0x80 | PONG, 2)) + b"hi"
    writer.write(client_frame(BINARY, b"\x01\x02") + client_frame(TEXT, "é".encode()))
    writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
    assert await asyncio.wait_for(reader.read(), 5) == bytes((0x80 | CLOSE, 2)) + struct.pack("!H", 1000)
    session = listener.acceptor.sessions[0]
    await asyncio.wait_for(session.lost.wait(), 5)
    assert session.texts == ["40/notifications,{}", "é"]
    assert session.binaries == [b"\x01\x02"]
    assert session.errors == []
    writer.close()


@pytest.mark.parametrize(("frame", "code"), [
    (bytes((0x81, 0x01)) + b"3", 1002),  # unmasked
    (client_frame(TEXT, b"\xff"), 1007),
    (bytes((0x82, 0xFE)) + struct.pack("!H", 5000) + b"\0\0\0\0", 1009),
], ids=["unmasked", "not-utf8", "oversize"])
async def test_a_broken_frame_closes_with_its_code(listener: Listener, frame: bytes, code: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(ws_head())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(client_frame(TEXT, b"4ok") + frame)
    assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes((0x80 | CLOSE, 2)) + struct.pack("!H", code)
    # what the client sends now cannot be read (its framing is broken): the connection is held,
    # unread data and all, until the client's FIN, then closed without a reset
    writer.write(b"\x81\x85" + b"\0" * 20)
    session = listener.acceptor.sessions[0]
    await asyncio.sleep(0.1)
    assert not session.lost.is_set()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(session.lost.wait(), 5)
    assert session.texts == ["4ok"]
    assert len(session.errors) == 1
    assert str(code) in session.errors[0]
    writer.close()


async def test_pings_from_a_client_that_does_not_read_do_not_pile_up_pongs(listener: Listener) -> None:
    """A client that sends PINGs and never reads must not make the server buffer a PONG for each:
    the PONGs would sit in the transport's user-space buffer without bound (RFC 6455 5.5.3 lets
    an endpoint answer only the latest PING)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that does not read
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", listener.port))
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(ws_head())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    ping = client_frame(PING, b"p" * 125)
    for _ in range(24):  # 24 x 1 MiB of PINGs, about 190,000 of them
        writer.write(ping * ((1 << 20) // len(ping)))
        await asyncio.wait_for(writer.drain(), 30)
    transport = listener.acceptor.transports[0]
    await asyncio.sleep(0.2)
    assert not transport.is_closing()
    assert transport.get_write_buffer_size() < 1 << 20
    writer.close()


async def test_a_close_echoed_to_a_client_that_does_not_read_is_cut_after_a_grace(
        listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends CLOSE and leaves what it was sent unread: the connection is closed
    gracefully (what is buffered may still go), but not for longer than CLOSE_GRACE; a graceful
    close alone would hold the buffer for as long as the client keeps its window shut."""
    monkeypatch.setattr(ws_protocol, "CLOSE_GRACE", 0.3)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", listener.port))
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(ws_head())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    transport = listener.acceptor.transports[0]
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport.write(b"\x82\x7f" + struct.pack("!Q", 1 << 20) + b"x" * (1 << 20))
    writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
    await writer.drain()
    session = listener.acceptor.sessions[0]
    await asyncio.wait_for(session.lost.wait(), 5)
    assert transport.get_write_buffer_size() == 0
    writer.close()


async def test_a_server_close_lingers_until_the_clients_close_frame(listener: Listener) -> None:
    """The server closes while the client is still sending and its reading is paused: the close
    frame goes out, what the client sends from then on is read and dropped (closed with it
    unread, the socket would reset, and the client's kernel would drop the close frame), and
    the client's close frame lets the server close the TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(ws_head())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    transport = listener.acceptor.transports[0]
    session = listener.acceptor.sessions[0]
    transport.pause_reading()  # as a session whose inbox is full does
    writer.write(client_frame(TEXT, b"4unread") * 2000)
    await writer.drain()
    ws_protocol.close_gracefully(transport, code=4001)
    assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes((0x80 | CLOSE, 2)) + struct.pack("!H", 4001)
    writer.write(client_frame(TEXT, b"4after the close"))
    await asyncio.sleep(0.1)
    assert not session.lost.is_set()
    assert session.texts == []
    writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # a FIN, not a reset
    await asyncio.wait_for(session.lost.wait(), 5)
    writer.close()


async def test_a_client_that_never_answers_a_close_is_cut_after_the_grace(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(ws_head())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    transport = listener.acceptor.transports[0]
    ws_protocol.close_gracefully(transport, grace=0.3)
    assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes((0x80 | CLOSE, 2)) + struct.pack("!H", 1000)
    await asyncio.wait_for(listener.acceptor.sessions[0].lost.wait(), 5)
    assert transport.is_closing()
    writer.close()
