"""CORS and origins: long-polling from an allowed origin gets CORS with credentials, another
origin gets no grant, requests without an Origin are allowed, and the WebSocket upgrade checks
the Origin; the same with the real client.
"""

from __future__ import annotations

import base64
import re
import secrets
import socket

import pytest

from tests.e2e.contract.support import (
    BOTH,
    COINS,
    ORIGIN,
    SECOND_ORIGIN,
    connect,
    emit_http,
    http,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients

FOREIGN_ORIGIN = "https://evil.example.net"


def ws_upgrade_status(gw: GatewayProcess, origin: str | None) -> int:
    """Status of a raw WebSocket upgrade of /socket.io/ (101 when accepted)."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1",
        f"Host: {gw.host}:{gw.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    assert match, f"no HTTP status line in {head[:200]!r}"
    return int(match.group(1))


POLL_OPEN = "/socket.io/?EIO=4&transport=polling"


@pytest.mark.parametrize("origin", [ORIGIN, SECOND_ORIGIN])
def test_polling_from_an_allowed_origin_gets_cors_with_credentials(gw: GatewayProcess,
                                                                   origin: str) -> None:
    status, headers, body = http("GET", gw.url + POLL_OPEN, headers={"Origin": origin})
    assert status == 200, body
    assert body.startswith(b"0{"), body  # the Engine.IO open packet
    assert headers.get("access-control-allow-origin") == origin
    assert headers.get("access-control-allow-credentials") == "true"

    status, headers, _ = http("OPTIONS", gw.url + POLL_OPEN, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status in (200, 204)
    assert headers.get("access-control-allow-origin") == origin
    assert headers.get("access-control-allow-credentials") == "true"


def test_polling_from_another_origin_gets_no_cors_grant(gw: GatewayProcess) -> None:
    status, headers, _ = http("GET", gw.url + POLL_OPEN, headers={"Origin": FOREIGN_ORIGIN})
    granted = headers.get("access-control-allow-origin")
    assert granted not in (FOREIGN_ORIGIN, "*"), (status, headers)


def test_requests_without_origin_are_allowed(gw: GatewayProcess) -> None:
    status, _, body = http("GET", gw.url + POLL_OPEN)
    assert status == 200, body
    assert body.startswith(b"0{")
    assert ws_upgrade_status(gw, None) == 101


def test_websocket_upgrade_origin_check(gw: GatewayProcess) -> None:
    assert ws_upgrade_status(gw, ORIGIN) == 101
    assert ws_upgrade_status(gw, SECOND_ORIGIN) == 101
    assert ws_upgrade_status(gw, FOREIGN_ORIGIN) != 101
    assert ws_upgrade_status(gw, "null") != 101


@BOTH
def test_real_client_from_an_allowed_origin(node_clients: NodeClients, gw: GatewayProcess,
                                            transport: str) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user), transport,
            extraHeaders={"Origin": ORIGIN}, withCredentials=True)
    status, _ = emit_http(gw, {"event": "coins:earned", "user": user, "data": COINS})
    assert status == 200
    assert node_clients.wait_events("a", "coins:earned", 1)[0].payload == COINS


def test_real_client_websocket_from_another_origin_is_refused(node_clients: NodeClients,
                                                              gw: GatewayProcess) -> None:
    node_clients.connect("a", gw.ns_url, token=token(), transports=["websocket"],
                         extraHeaders={"Origin": FOREIGN_ORIGIN}, reconnection=False)
    outcome = node_clients.wait_connected("a")
    assert outcome["type"] == "connect_error", outcome
    assert not [r for r in node_clients.log("a") if r["type"] == "connect"]


@BOTH
def test_real_client_without_origin(node_clients: NodeClients, gw: GatewayProcess,
                                    transport: str) -> None:
    # Node's socket.io-client sends no Origin header unless told to: a mobile app, a server.
    connect(node_clients, "a", gw, token(), transport)
