"""Engine.IO sessions on the native accept path, in-process (one replica from `create_app`,
listening through `gateway.ws.listen` as `gateway` does): a fresh WebSocket session, an upgrade
from polling with its probe, a failed probe that leaves the session on polling, a second upgrade
left to python-engineio, and a client's CLOSE."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web

from gateway.app import GATEWAY, Gateway, create_app, native_acceptor
from gateway.config import load_settings
from gateway.sio.native import NativeSocket
from gateway.sio.socket import FastSocket
from gateway.ws import listen
from gateway.ws.frames import CLOSE, TEXT
from tests.unit.ws_wire import client_frame

SECRET = "n" * 40
NS = "/notifications"


def token(user: str = "1") -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "role": "student", "classrooms": ["1"], "iat": now, "exp": now + 3600},
                      SECRET, algorithm="HS256")


class Client:
    """A minimal WebSocket client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, query: str, extra: str = "", host: str = "x") -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"GET /socket.io/?{query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer), head

    def send(self, text: str) -> None:
        self.writer.write(client_frame(TEXT, text.encode()))

    async def recv(self) -> tuple[int, bytes]:
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 5)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        return b0 & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), 5)

    async def recv_text(self) -> str:
        opcode, payload = await self.recv()
        assert opcode == TEXT, (opcode, payload)
        return payload.decode()

    async def closed(self) -> bool:
        """Whether the server ends the connection, at once or after its close frame, which is
        answered as a browser does: then the server closes the TCP connection (RFC 6455 7.1.1)."""
        while True:
            try:
                opcode, _ = await self.recv()
            except asyncio.IncompleteReadError as eof:
                return eof.partial == b""
            if opcode == CLOSE:
                break
        self.send_close()
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def send_close(self) -> None:
        self.writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))

    def close(self) -> None:
        self.writer.close()


@dataclass
class Replica:
    gateway: Gateway
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=polling"


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    async with serve(dev=False) as running:
        yield running


@contextlib.asynccontextmanager
async def serve(*, dev: bool, **env: str) -> AsyncIterator[Replica]:
    app = create_app(load_settings({"JWT_SECRET": SECRET, **env}, dev=dev))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    gateway = app[GATEWAY]
    server = await listen(native_acceptor(gateway), runner.server, "127.0.0.1", 0, head_timeout=5)
    try:
        yield Replica(gateway, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        gateway.close_websockets()
        await runner.cleanup()


async def test_a_fresh_websocket_session_is_native(replica: Replica) -> None:
    client, head = await Client.connect(replica.port, "EIO=4&transport=websocket")
    assert head.startswith(b"HTTP/1.1 101 ")
    opening = orjson.loads((await client.recv_text())[1:])
    assert opening["upgrades"] == []
    assert opening["maxPayload"] == 65536
    sock = replica.gateway.sio.eio.sockets[opening["sid"]]
    assert type(sock) is NativeSocket
    client.send(f"40{NS}," + orjson.dumps({"token": token()}).decode())
    reply = await client.recv_text()
    assert reply.startswith(f"40{NS},{{\"sid\":"), reply
    assert len(replica.gateway.core) == 1
    client.send("3")  # a PONG nobody asked for: ignored
    client.send("1")  # the client's Engine.IO CLOSE
    assert await client.closed()
    for _ in range(100):
        if len(replica.gateway.core) == 0 and sock.closed:
            break
        await asyncio.sleep(0.02)
    assert len(replica.gateway.core) == 0
    assert sock.closed
    client.close()


async def connected_on_polling(http: aiohttp.ClientSession, replica: Replica) -> str:
    """A session connected to the namespace over polling; its sid."""
    async with http.get(replica.url) as answer:
        sid: str = orjson.loads((await answer.text())[1:])["sid"]
    async with http.post(f"{replica.url}&sid={sid}",
                         data=f"40{NS}," + orjson.dumps({"token": token()}).decode()) as answer:
        assert await answer.text() == "ok"
    async with http.get(f"{replica.url}&sid={sid}") as answer:
        assert (await answer.text()).startswith(f"40{NS},{{\"sid\":")
    return sid


async def probed(http: aiohttp.ClientSession, replica: Replica, sid: str) -> Client:
    """A new WebSocket of a polling session, probed: `2probe`, `3probe`, and the NOOP that ends
    the pending poll."""
    client, head = await Client.connect(replica.port, f"EIO=4&transport=websocket&sid={sid}")
    assert head.startswith(b"HTTP/1.1 101 "), head
    poll = asyncio.ensure_future(http.get(f"{replica.url}&sid={sid}"))
    await asyncio.sleep(0.05)
    client.send("2probe")
    assert await client.recv_text() == "3probe"
    async with await poll as answer:
        assert await answer.text() == "6"
    return client


async def upgrade(http: aiohttp.ClientSession, replica: Replica, sid: str) -> tuple[Client, FastSocket]:
    """Engine.IO's upgrade of a polling session to a new WebSocket, to its end (`5`); the
    WebSocket's client and the session's socket."""
    client = await probed(http, replica, sid)
    client.send("5")
    sock = replica.gateway.sio.eio.sockets[sid]
    for _ in range(100):
        if sock.upgraded:
            break
        await asyncio.sleep(0.01)
    return client, sock


async def test_an_upgrade_from_polling_is_taken_over_natively(replica: Replica) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await connected_on_polling(http, replica)
        client, sock = await upgrade(http, replica, sid)
        assert type(sock) is NativeSocket
        assert sock.is_websocket
        # a second upgrade is python-engineio's to refuse
        again, head = await Client.connect(replica.port, f"EIO=4&transport=websocket&sid={sid}")
        assert head.startswith(b"HTTP/1.1 400"), head
        again.close()
        client.send(f'42{NS},7["subscribe:notifications"]')
        assert (await client.recv_text()).startswith(f'43{NS},7[{{"ok":true')
        client.close()


async def test_a_failed_probe_leaves_the_session_on_polling(replica: Replica) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(replica.url) as answer:
            sid = orjson.loads((await answer.text())[1:])["sid"]
        client, head = await Client.connect(replica.port, f"EIO=4&transport=websocket&sid={sid}")
        assert head.startswith(b"HTTP/1.1 101 ")
        client.send("not a probe")
        assert await client.closed()
        client.close()
        sock = replica.gateway.sio.eio.sockets[sid]
        assert not sock.closed
        assert not sock.upgrading
        assert not sock.is_websocket
        async with http.post(f"{replica.url}&sid={sid}",
                             data=f"40{NS}," + orjson.dumps({"token": token()}).decode()) as answer:
            assert await answer.text() == "ok"
        async with http.get(f"{replica.url}&sid={sid}") as answer:
            assert (await answer.text()).startswith(f"40{NS},{{\"sid\":")
        assert isinstance(sock, FastSocket)


async def test_an_unknown_session_is_python_engineios_to_refuse(replica: Replica) -> None:
    client, head = await Client.connect(replica.port, "EIO=4&transport=websocket&sid=nope")
    assert head.startswith(b"HTTP/1.1 400"), head
    client.close()


async def test_a_burst_of_packets_is_handled_in_order_and_reading_resumes(replica: Replica) -> None:
    """More packets than the inbox holds before the connection stops being read (INBOX_PAUSE),
    in one write: every one is handled, in order, and the connection is read again after."""
    client, _ = await Client.connect(replica.port, "EIO=4&transport=websocket")
    await client.recv_text()  # OPEN
    client.send(f"40{NS}," + orjson.dumps({"token": token()}).decode())
    assert (await client.recv_text()).startswith(f"40{NS},")
    for i in range(1, 41):  # RATE_LIMIT_BURST is 40
        client.send(f'42{NS},{i}["subscribe:notifications"]')
    acks = [await client.recv_text() for _ in range(40)]
    assert [a[len(f"43{NS},"):].split("[", 1)[0] for a in acks] == [str(i) for i in range(1, 41)]
    assert all('"ok":true' in a for a in acks)
    client.send(f'42{NS},41["subscribe:notifications"]')
    assert '"error":"rate_limited"' in await client.recv_text()
    client.close()


@pytest.mark.parametrize("dev", [True, False])
async def test_the_dev_consoles_own_origin_may_open_a_websocket(dev: bool) -> None:
    """FRONTEND_URL does not list the gateway's own origin; in development mode a page it served
    (Origin = the Host the request names, from a loopback peer) may open a socket all the same."""
    async with serve(dev=dev) as running:
        host = f"127.0.0.1:{running.port}"
        client, head = await Client.connect(running.port, "EIO=4&transport=websocket",
                                            extra=f"Origin: http://{host}\r\n", host=host)
        assert head.startswith(b"HTTP/1.1 101 " if dev else b"HTTP/1.1 400 "), head
        client.close()
        other, head = await Client.connect(running.port, "EIO=4&transport=websocket",
                                           extra="Origin: http://elsewhere.example\r\n", host=host)
        assert head.startswith(b"HTTP/1.1 400 "), head
        other.close()


async def test_an_upgrade_whose_session_ends_during_the_probe_is_not_taken_over(replica: Replica) -> None:
    """The session ends (here: the server closes it) after `3probe`: the probe's WebSocket is
    closed with it, and a late `5` must not adopt a WebSocket for a session that is gone (nothing
    would ever close it: no heartbeat, no session)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(replica.url) as answer:
            sid = orjson.loads((await answer.text())[1:])["sid"]
        client = await probed(http, replica, sid)
        sock = replica.gateway.sio.eio.sockets[sid]
        await sock.close(wait=False, abort=True, reason=sock.server.reason.SERVER_DISCONNECT)
        assert await client.closed()
        with contextlib.suppress(ConnectionError):
            client.send("5")  # too late: the connection is gone
            await client.writer.drain()
        await asyncio.sleep(0.05)
        assert not sock.is_websocket
        assert not sock.upgrading
        client.close()


async def test_a_session_that_times_out_does_not_hold_its_unread_frames() -> None:
    """A client gone without a FIN (a network blip, a sleeping laptop) stops answering PINGs with
    frames still waiting in the server's buffer. When its session times out its connection must
    be let go (as on aiohttp's path, where it is aborted), not closed gracefully: a graceful close
    waits for the buffer to drain, which takes the kernel's retransmission timeout (about 15
    minutes) for a peer that is gone, holding the buffer all that time."""
    async with serve(dev=False, PING_INTERVAL="1000", PING_TIMEOUT="1000") as running:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that does not read
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", running.port))
        reader, writer = await asyncio.open_connection(sock=raw)
        writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        client = Client(reader, writer)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        sid = orjson.loads((await client.recv_text())[1:])["sid"]
        sock = running.gateway.sio.eio.sockets[sid]
        transport = sock._tr
        assert transport is not None
        # the kernel's buffers kept small, so that what the client leaves unread stays in ours
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for _ in range(64):  # 512 KiB, under SEND_BUFFER_LIMIT: not a slow consumer yet
            sock.write_frame(b"\x82\x7e\x20\x00" + b"x" * 8192)
        await asyncio.sleep(0.1)
        assert transport.get_write_buffer_size() > 0
        for _ in range(160):  # the ping interval, its timeout, and the heartbeat's tick
            if sock.closed and transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.05)
        assert sock.closed
        assert transport.get_write_buffer_size() == 0, "the connection still holds the unread frames"
        writer.close()


async def test_a_flooder_disconnected_with_frames_unread_still_reads_why() -> None:
    """A client past RATE_LIMIT_DISCONNECT_AFTER gets its DISCONNECT; the frames it sent after
    that (here: hundreds, in one write, so the connection stops being read) are dropped, and
    the transport closes. Closed with that data unread, the socket would end in a reset, and
    the client's kernel would drop the acks and the DISCONNECT it has not read yet."""
    rate = {"RATE_LIMIT_EVENTS": "10", "RATE_LIMIT_BURST": "20", "RATE_LIMIT_DISCONNECT_AFTER": "100"}
    async with serve(dev=False, **rate) as replica:
        client, _ = await Client.connect(replica.port, "EIO=4&transport=websocket")
        await client.recv_text()  # OPEN
        client.send(f"40{NS}," + orjson.dumps({"token": token()}).decode())
        assert (await client.recv_text()).startswith(f"40{NS},")
        for i in range(1, 1001):
            client.send(f'42{NS},{i}["subscribe:notifications"]')
        texts = []
        while True:
            opcode, payload = await client.recv()
            if opcode == CLOSE:
                break
            texts.append(payload.decode())
        assert texts[-1] == f"41{NS},", texts[-3:]
        acks = texts[:-1]
        assert len(acks) >= 120  # the burst, what trickled in meanwhile, and the 100 refused
        assert sum('"error":"rate_limited"' in ack for ack in acks) == 100
        client.send_close()  # as a browser answers: the server then closes the connection
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
        client.close()


async def connected_client(port: int) -> Client:
    client, _ = await Client.connect(port, "EIO=4&transport=websocket")
    await client.recv_text()  # OPEN
    client.send(f"40{NS}," + orjson.dumps({"token": token()}).decode())
    assert (await client.recv_text()).startswith(f"40{NS},")
    return client


async def test_nothing_is_written_after_the_close_frame_of_a_protocol_error(replica: Replica) -> None:
    """Messages read before a broken frame are still handled (by the inbox task, later); their
    acks must not follow the close frame the protocol error wrote (RFC 6455 5.5.1)."""
    client = await connected_client(replica.port)
    client.send(f'42{NS},1["subscribe:notifications"]')
    client.writer.write(b"\x81\x05hello")  # an unmasked client frame: 1002
    frames = []
    while True:
        try:
            opcode, payload = await client.recv()
        except asyncio.IncompleteReadError:
            break
        frames.append((opcode, payload))
        if opcode == CLOSE:
            client.writer.write_eof()  # the framing is broken: only a FIN ends the linger
    assert frames[-1] == (CLOSE, struct.pack("!H", 1002)), frames
    for _ in range(100):
        if len(replica.gateway.core) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(replica.gateway.core) == 0
    client.close()


async def test_shutdown_cuts_a_websocket_still_lingering(replica: Replica) -> None:
    """A socket closed gracefully (as the drain does) whose client never answers the close
    frame: the shutdown's close_websockets still cuts it, and its session ends."""
    client = await connected_client(replica.port)
    gateway = replica.gateway
    (sock,) = gateway.sio.eio.sockets.values()
    transport = sock._tr
    assert transport is not None
    sock.close_transport(flush=True)
    assert (await client.recv())[0] == CLOSE  # and the client does not answer
    gateway.close_websockets()
    for _ in range(100):
        if len(gateway.core) == 0:
            break
        await asyncio.sleep(0.02)
    assert transport.is_closing()
    assert len(gateway.core) == 0
    client.close()


async def test_the_end_of_a_failed_probe_does_not_end_the_session_upgraded_since(replica: Replica) -> None:
    """Probe 1 fails and its WebSocket lingers; the client upgrades on a second one. When probe
    1's connection ends at last, the session (now on the second) is not taken for gone."""
    async with aiohttp.ClientSession() as http:
        sid = await connected_on_polling(http, replica)
        first, _ = await Client.connect(replica.port, f"EIO=4&transport=websocket&sid={sid}")
        first.send("not a probe")
        assert (await first.recv())[0] == CLOSE  # not answered yet: it lingers
        second, sock = await upgrade(http, replica, sid)
        assert sock.is_websocket
        first.send_close()  # probe 1's client answers now: the server ends that connection
        assert await asyncio.wait_for(first.reader.read(), 5) == b""
        await asyncio.sleep(0.1)
        assert not sock.closed, "the session ended with probe 1's connection"
        second.send(f'42{NS},7["subscribe:notifications"]')
        assert (await second.recv_text()).startswith(f'43{NS},7[{{"ok":true')
        first.close()
        second.close()
