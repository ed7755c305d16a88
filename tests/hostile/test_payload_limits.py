"""Payloads over the limit (MAX_PAYLOAD_BYTES, 64 KiB by default): a 2 MiB message over
WebSocket (one frame, or fragments) and over a long-polling POST is refused and its connection
closed, the replica does not buffer it, and other users keep receiving. A message split into
Socket.IO binary attachments must not get around the limit either."""

from __future__ import annotations

import http.client
import os
import threading
import time
from typing import Any

import orjson
import pytest

from publisher import Publisher
from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, RawWS, connected
from tests.hostile.support import (
    MIB,
    Feeder,
    assert_all_received,
    base_env,
    connect_good,
    log_problems,
    metric,
    rss_kib,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

BIG = 2 * MIB
CONTINUATION = 0x0


def big_event(n: int = BIG) -> bytes:
    return f'42{NS},1["subscribe:notifications","'.encode() + b"x" * n + b'"]'


@pytest.fixture
def replica(start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str) -> GatewayProcess:
    return start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url))


@pytest.mark.parametrize("how", ["before CONNECT", "after CONNECT", "in 64 fragments"])
def test_2mib_over_websocket_is_refused_and_the_connection_closed(
    replica: GatewayProcess, jwt_secret: str, node_clients: NodeClients, pub: Publisher, how: str,
) -> None:
    good = uid("good")
    connect_good(node_clients, "good", replica, token(jwt_secret, good))
    rss_before = rss_kib(replica)
    errors_before = metric(replica, "ws_errors_total", kind="invalid_packet")
    if how == "before CONNECT":
        ws = RawWS.connect(replica.port)
        ws.eio_open()
    else:
        ws, _ = connected(replica.port, token(jwt_secret, uid("big")))
    with Feeder(pub, good, least=50) as feeder:
        try:
            if how == "in 64 fragments":
                body = big_event()
                step = len(body) // 64 + 1
                parts = [body[i:i + step] for i in range(0, len(body), step)]
                ws.send_frame(0x1, parts[0], fin=False)
                for part in parts[1:-1]:
                    ws.send_frame(CONTINUATION, part, fin=False)
                ws.send_frame(CONTINUATION, parts[-1], fin=True)
            else:
                ws.send_frame(0x1, big_event())
        except OSError:
            pass  # the server closed while we were still sending: fine
        closed = ws.wait_closed(5)
    ws.close()
    assert closed, "the connection that sent 2 MiB is still open"
    assert_all_received(node_clients, "good", feeder.sent)
    grown = (rss_kib(replica) - rss_before) / 1024
    print(f"2 MiB over WebSocket {how}: closed; RSS {rss_before // 1024} MiB -> +{grown:.1f} MiB; "
          f"the well-behaved client received {len(feeder.sent)} of {len(feeder.sent)}")
    assert grown < 16, f"RSS grew by {grown:.1f} MiB for one refused message"
    assert metric(replica, "ws_errors_total", kind="invalid_packet") == errors_before + 1
    assert log_problems(replica) == []


class Polling:
    """A long-polling Engine.IO session over plain HTTP."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        status, body = self.request("GET", "EIO=4&transport=polling")
        assert status == 200, body
        self.sid = orjson.loads(body[1:])["sid"]
        self.query = f"EIO=4&transport=polling&sid={self.sid}"

    def request(self, method: str, query: str, body: Any = None, timeout: float = 10,
                headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=timeout)
        try:
            conn.request(method, "/socket.io/?" + query, body=body, headers=headers or {}, **kwargs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, body: Any, timeout: float = 10, **kwargs: Any) -> tuple[int, bytes]:
        return self.request("POST", self.query, body, timeout, **kwargs)

    def get(self, timeout: float = 10) -> tuple[int, bytes]:
        return self.request("GET", self.query, timeout=timeout)

    def connect(self, tok: str) -> None:
        assert self.post(f"40{NS},{orjson.dumps({'token': tok}).decode()}".encode()) == (200, b"ok")
        status, body = self.get()
        assert status == 200, body
        assert body.startswith(f"40{NS},{{".encode()), body


@pytest.mark.parametrize("poll_pending", [True, False], ids=["a poll pending", "no poll pending"])
def test_2mib_polling_post_is_refused_and_the_session_closed(
    replica: GatewayProcess, jwt_secret: str, node_clients: NodeClients, pub: Publisher, poll_pending: bool,
) -> None:
    good = uid("good")
    connect_good(node_clients, "good", replica, token(jwt_secret, good), transport="polling")
    session = Polling(replica)
    session.connect(token(jwt_secret, uid("big")))
    rss_before = rss_kib(replica)
    pending: dict[str, tuple[int, bytes]] = {}
    poller = threading.Thread(target=lambda: pending.update(get=session.get(15)))
    if poll_pending:
        poller.start()
        time.sleep(0.3)  # let the poll reach the server before the POST (no way to observe it)
    with Feeder(pub, good, least=50) as feeder:
        status, body = session.post(big_event(), timeout=10)
    if poll_pending:
        poller.join(20)
        assert pending.get("get", (0,))[0] in {200, 400}, pending
    assert 400 <= status < 500, (status, body)
    after = session.get(5)
    assert after[0] == 400 or after[1].startswith(b"1"), f"the session lives on: {after}"
    assert_all_received(node_clients, "good", feeder.sent)
    grown = (rss_kib(replica) - rss_before) / 1024
    print(f"2 MiB polling POST ({'a poll pending' if poll_pending else 'no poll pending'}): HTTP {status}, "
          f"session closed; RSS +{grown:.1f} MiB; the well-behaved client received all {len(feeder.sent)}")
    assert grown < 16
    assert log_problems(replica) == []


def test_2mib_chunked_polling_post_never_reaches_the_socket(
    replica: GatewayProcess, jwt_secret: str, node_clients: NodeClients, pub: Publisher,
) -> None:
    """Without Content-Length python-engineio reads nothing of the body: the 2 MiB are not
    buffered and the event inside is never handled (no ack comes back)."""
    good = uid("good")
    connect_good(node_clients, "good", replica, token(jwt_secret, good))
    session = Polling(replica)
    session.connect(token(jwt_secret, uid("chunked")))
    rss_before = rss_kib(replica)
    body = big_event()

    def chunks() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    with Feeder(pub, good, least=50) as feeder:
        try:
            status, _ = session.post(chunks(), timeout=15, encode_chunked=True,
                                     headers={"Transfer-Encoding": "chunked"})
        except OSError:
            status = 0  # the server may cut the connection: fine
    assert status < 500
    if status:  # the session lives on: it answers a normal event, and only that one
        assert session.post(f'42{NS},2["subscribe:notifications"]'.encode()) == (200, b"ok")
        _, polled = session.get(5)
        assert f"43{NS},2[".encode() in polled, polled[:200]
        assert f"43{NS},1[".encode() not in polled, "the oversized event was handled"
    assert_all_received(node_clients, "good", feeder.sent)
    assert (rss_kib(replica) - rss_before) / 1024 < 16
    assert log_problems(replica) == []


@pytest.mark.parametrize("frame", ["binary", "text"])
def test_binary_attachments_cannot_get_around_the_payload_limit(
    replica: GatewayProcess, jwt_secret: str, node_clients: NodeClients, pub: Publisher, frame: str,
) -> None:
    good = uid("good")
    connect_good(node_clients, "good", replica, token(jwt_secret, good))
    ws, _ = connected(replica.port, token(jwt_secret, uid("attach")))
    rss_before = rss_kib(replica)
    ws.send_text(f'459999999999-{NS},["subscribe:notifications",{{"_placeholder":true,"num":0}}]')
    chunk = os.urandom(60_000)
    text = "4" + "y" * 59_999
    sent = 0
    with Feeder(pub, good, least=50) as feeder:
        try:
            while sent < 96 * MIB:
                if frame == "binary":
                    ws.send_binary(chunk)
                else:
                    ws.send_text(text)
                sent += len(chunk)
        except OSError:
            pass  # let go: what the test wants
        time.sleep(0.5)
        closed = ws.wait_closed(2)
    ws.close()
    grown = (rss_kib(replica) - rss_before) / 1024
    print(f"attachments ({frame}): sent {sent / MIB:.0f} MiB; connection closed: {closed}; RSS "
          f"{rss_before // 1024} MiB -> +{grown:.0f} MiB")
    assert_all_received(node_clients, "good", feeder.sent)
    assert grown < 32, f"one client made the replica hold {grown:.0f} MiB more ({sent / MIB:.0f} MiB sent)"
    assert closed
