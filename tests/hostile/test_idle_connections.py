"""Thousands of idle connections while a real client keeps receiving: TCP connections that
never send a byte, Engine.IO sessions (WebSocket and polling) that never send CONNECT, which
HANDSHAKE_TIMEOUT (2 s here) must close, slow requests, and transports whose Socket.IO session
left. The replica's RSS is reported before, during and after."""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import time

import orjson

from publisher import Publisher
from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, Closed, RawWS, connected
from tests.hostile.support import (
    Feeder,
    assert_all_received,
    base_env,
    connect_good,
    log_problems,
    metric,
    rss_kib,
    token,
    uid,
    wait_until,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

IDLE_TCP = 3000
EIO_WS = 800
EIO_POLLING = 200
HANDSHAKE_TIMEOUT = 2.0


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files (the replica, started after, inherits it);
    returns how many connections fit, both ends on this machine, with room to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft) - 512


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed this raw connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def polling_handshake(gw: GatewayProcess) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", "/socket.io/?EIO=4&transport=polling")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return str(orjson.loads(body[1:])["sid"])
    finally:
        conn.close()


def polling_get(gw: GatewayProcess, sid: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def polling_session_lives(gw: GatewayProcess, sid: str) -> bool:
    """A poll on an ended session is refused (400); one that was waiting when the session ended
    returns what was queued, and the next is refused. A live idle session holds the poll."""
    for _ in range(2):
        try:
            status, _ = polling_get(gw, sid, timeout=5)
        except TimeoutError:
            return True
        if status == 400:
            return False
    return True


def test_thousands_of_idle_connections_while_a_client_keeps_receiving(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    room = raise_fd_limit(IDLE_TCP + EIO_WS + 2048)
    scale = min(1.0, room / (IDLE_TCP + EIO_WS))
    idle_tcp, eio_ws, eio_polling = int(IDLE_TCP * scale), int(EIO_WS * scale), EIO_POLLING
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT)))
    good = uid("good")
    connect_good(node_clients, "good", gw, token(jwt_secret, good))
    rss_before = rss_kib(gw)
    idle: list[socket.socket] = []
    sessions: list[RawWS] = []
    polling: list[str] = []
    try:
        with Feeder(pub, good, least=300) as feeder:
            for _ in range(idle_tcp):
                idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
            for _ in range(eio_ws):
                ws = RawWS.connect(gw.port)
                ws.eio_open()
                sessions.append(ws)
            for _ in range(eio_polling):
                polling.append(polling_handshake(gw))
            opened = time.monotonic()
            rss_during = rss_kib(gw)
            # the replica serves while holding them all
            assert node_clients.emit("good", "subscribe:notifications", timeout=5)["ok"] is True

            # every Engine.IO session without CONNECT is closed by HANDSHAKE_TIMEOUT
            deadline = opened + HANDSHAKE_TIMEOUT + 10
            open_ws = [ws for ws in sessions if not ws.wait_closed(max(0.01, deadline - time.monotonic()))]
            assert open_ws == [], f"{len(open_ws)} of {eio_ws} WebSocket sessions outlived HANDSHAKE_TIMEOUT"
            alive = [sid for sid in polling if polling_session_lives(gw, sid)]
            assert alive == [], f"{len(alive)} of {eio_polling} polling sessions outlived HANDSHAKE_TIMEOUT"
            timeouts = metric(gw, "ws_errors_total", kind="handshake_timeout")
            rss_timed_out = rss_kib(gw)
            tcp_closed = sum(closed_by_server(s) for s in idle)
    finally:
        for sock in idle:
            sock.close()
        for ws in sessions:
            ws.close()
    time.sleep(1)  # the replica notices the closes (nothing to wait on from outside)
    rss_after = rss_kib(gw)

    received = assert_all_received(node_clients, "good", feeder.sent)
    print(f"\nidle connections: RSS before {rss_before / 1024:.1f} MiB; with {idle_tcp} idle TCP + "
          f"{eio_ws + eio_polling} Engine.IO sessions open {rss_during / 1024:.1f} MiB; after the handshake "
          f"timeout {rss_timed_out / 1024:.1f} MiB; after the {idle_tcp} idle TCP closed by us "
          f"{rss_after / 1024:.1f} MiB; idle TCP closed by the replica: {tcp_closed} of {idle_tcp}; "
          f"handshake_timeout count {timeouts:.0f}; the well-behaved client received {received} of "
          f"{len(feeder.sent)} events")
    assert timeouts >= eio_ws + eio_polling
    assert gw.alive()
    assert rss_during - rss_before < 400 * 1024, "over 100 KiB per idle connection"
    assert rss_after - rss_before < 0.75 * (rss_during - rss_before) + 32 * 1024, "memory not given back"
    assert metric(gw, "ws_connections_active") == 1
    assert log_problems(gw) == []


def test_connections_that_never_send_a_request_are_closed_by_the_handshake_timeout(
    start_gateway: StartGateway, jwt_secret: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret, HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT)))
    silent = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(100)]
    slow = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    try:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 4
        while time.monotonic() < deadline:
            still = [s for s in silent + slow if not closed_by_server(s)]
            if not still:
                break
            time.sleep(0.2)
        assert still == [], f"{len(still)} of 200 connections without a request are still open " \
            f"{HANDSHAKE_TIMEOUT + 4:.0f} s later"
    finally:
        for sock in silent + slow:
            sock.close()


def test_a_transport_whose_session_left_is_closed(
    start_gateway: StartGateway, jwt_secret: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret, HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT),
                                MAX_CONNECTIONS_PER_USER="2"))
    tok = token(jwt_secret, uid("leaver"), exp_in=4)
    transports = []
    for _ in range(6):  # three times the per-user limit, one after another
        ws, _ = connected(gw.port, tok)
        ws.send_text(f"41{NS},")
        transports.append(ws)
    wait_until(lambda: metric(gw, "ws_connections_active") == 0, 5, "no session left")
    time.sleep(HANDSHAKE_TIMEOUT + 4)  # past the handshake timeout and the token's expiry
    still_open = []
    for ws in transports:
        try:
            ws.recv_text(0.5)  # answers a PING if one comes
            still_open.append(ws)
        except TimeoutError:
            still_open.append(ws)
        except Closed:
            pass
    for ws in transports:
        ws.close()
    assert still_open == [], f"{len(still_open)} of 6 transports without a session still open " \
        f"{HANDSHAKE_TIMEOUT + 4:.0f} s later (token expired, per-user limit 2)"


def test_a_polling_post_in_two_tcp_segments_is_read_whole(
    start_gateway: StartGateway, jwt_secret: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret))
    sid = polling_handshake(gw)
    body = f"40{NS},{json.dumps({'token': token(jwt_secret, uid('split'))})}".encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:40])
        time.sleep(0.3)  # the rest comes later, as a second segment would
        with contextlib.suppress(OSError):
            sock.sendall(body[40:])
        answer = sock.recv(4096)
    assert answer.endswith(b"ok"), answer
    status, polled = polling_get(gw, sid)
    assert status == 200, (status, polled)
    assert polled.startswith(f"40{NS},{{".encode()), polled
