"""Both accept paths a replica can run (WS_ACCEPT): the native one (the default) and aiohttp's
(the fallback) give clients the same answers: a WebSocket session and its CONNECT, an upgrade
from polling with the real socket.io-client, a refused Origin, a bad Engine.IO version, a
malformed upgrade; and the native one keeps serving after a malformed request head."""

from __future__ import annotations

import socket

import pytest

from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, RawWS, Refused, connected
from tests.hostile.support import base_env, token, uid
from tests.support.checks import wait_until
from tests.support.sio_client import NodeClients


@pytest.fixture(params=["native", "aiohttp"])
def accept(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def refused_status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(Refused) as caught:
        RawWS.connect(port, path, headers=headers)
    return caught.value.status


def test_sessions_and_refusals_are_the_same_on_both_paths(
        start_gateway: StartGateway, jwt_secret: str, node_clients: NodeClients, accept: str) -> None:
    gw = start_gateway(base_env(jwt_secret, WS_ACCEPT=accept, FRONTEND_URL="http://app.example"))
    ws, _ = connected(gw.port, token(jwt_secret, uid("u")))
    ws.send_text(f'42{NS},1["subscribe:notifications"]')
    assert ws.recv_text().startswith(f'43{NS},1[{{"ok":true')
    ws.sock.close()
    # the real client, polling first and then upgrading
    node_clients.connect("upgrader", gw.ns_url, token=token(jwt_secret, uid("v")), transports=["polling", "websocket"])
    assert node_clients.wait_connected("upgrader", timeout=10)["type"] == "connect"
    wait_until(lambda: node_clients.state("upgrader").get("transport") == "websocket", 10,
               "socket.io-client's upgrade from polling to websocket")
    assert refused_status(gw.port, "/socket.io/?EIO=4&transport=websocket",
                          {"Origin": "http://evil.example"}) == 400
    assert refused_status(gw.port, "/socket.io/?EIO=3&transport=websocket") == 400
    assert refused_status(gw.port, "/socket.io/?EIO=4&transport=websocket&sid=unknown") == 400


def test_a_malformed_head_is_refused_and_the_replica_keeps_serving(
        start_gateway: StartGateway, jwt_secret: str) -> None:
    gw = start_gateway(base_env(jwt_secret))
    for head in (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nBroken header\r\n\r\n",
                 b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    ws, _ = connected(gw.port, token(jwt_secret, uid("after")))
    ws.sock.close()
