"""POST /api/emit against a raw socket (issue 12, item 11): a body that arrives in several TCP
segments is one request, read whole (up to its bound) before it is parsed; a spurious 400 for
a request that was only slow to arrive was the bug. The same was fixed for polling POSTs."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time

import pytest

from tests.hostile.conftest import StartGateway
from tests.hostile.support import base_env, connect_good, log_problems, metric, token, uid
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients

API_KEY = secrets.token_urlsafe(32)
PAUSE = 0.3  # between two segments: long enough for the replica to read the first on its own


@pytest.fixture
def replica(start_gateway: StartGateway, jwt_secret: str) -> GatewayProcess:
    return start_gateway(base_env(jwt_secret, PUBLISH_API_KEY=API_KEY))


def head(port: int, extra: str) -> bytes:
    return (f"POST /api/emit HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\nConnection: close\r\n{extra}\r\n").encode()


def send_in_segments(port: int, parts: list[bytes]) -> tuple[int, dict[str, object]]:
    """Each part written on its own (Nagle off), with a pause between; the answer read whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i, part in enumerate(parts):
                if i:
                    time.sleep(PAUSE)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the replica answered (and closed) before the end: its answer is read below
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body)


def emit_body(user: str, n: int) -> bytes:
    return json.dumps({"event": "coins:earned", "user": user,
                       "data": {"amount": 50, "reason": "x" * 2000, "newBalance": n}}).encode()


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


def test_a_body_split_over_two_segments_is_read_whole(
    replica: GatewayProcess, jwt_secret: str, node_clients: NodeClients,
) -> None:
    user = uid("split")
    connect_good(node_clients, "a", replica, token(jwt_secret, user))
    body = emit_body(user, 1)
    half = len(body) // 2
    status, answer = send_in_segments(replica.port, [
        head(replica.port, f"Content-Length: {len(body)}\r\n") + body[:half], body[half:]])
    assert status == 200, answer
    assert answer["ok"] is True
    [event] = node_clients.wait_events("a", "coins:earned", 1)
    assert event.payload["newBalance"] == 1
    assert len(event.payload["reason"]) == 2000

    # Chunked, the chunks apart: no Content-Length to go by
    body = emit_body(user, 2)
    status, answer = send_in_segments(replica.port, [
        head(replica.port, "Transfer-Encoding: chunked\r\n") + chunked(body[:100])[0],
        *chunked(body[100:])[:1], b"0\r\n\r\n"])
    assert status == 200, answer
    assert node_clients.wait_events("a", "coins:earned", 2)[-1].payload["newBalance"] == 2
    assert metric(replica, "http_emit_total", outcome="invalid_json") == 0
    assert log_problems(replica) == []


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(replica: GatewayProcess) -> None:
    piece = b"x" * 32768
    status, answer = send_in_segments(replica.port, [
        head(replica.port, "Transfer-Encoding: chunked\r\n") + chunked(b'{"event": "x", "all": true, "data": "')[0],
        *chunked(piece, piece, piece)[:3], *chunked(b'"}')])
    assert status == 413, answer
    assert answer["error"] == "payload_too_large"
    assert replica.alive()


def test_a_client_that_leaves_halfway_through_its_body_costs_nothing(replica: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
        sock.sendall(head(replica.port, "Content-Length: 1000\r\n") + b'{"event": "coins:earned", ')
        time.sleep(PAUSE)
    body = emit_body(uid("after"), 3)
    status, answer = send_in_segments(replica.port, [head(replica.port, f"Content-Length: {len(body)}\r\n") + body])
    assert status == 200, answer
    assert log_problems(replica) == [], "a client's departure is not the replica's error"
