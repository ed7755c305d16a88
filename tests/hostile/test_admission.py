"""Who may open a connection: new sessions per client IP (X-Forwarded-For believed only from
TRUSTED_PROXIES) and sockets per user, against real replicas. Existing users are never hurt by
someone else's refusals."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from publisher import Publisher
from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, RawWS, Refused
from tests.hostile.support import (
    COINS,
    EVENT,
    assert_all_received,
    base_env,
    connect_good,
    log_problems,
    metric,
    token,
    uid,
    wait_until,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

NOT_EXEMPT = "192.0.2.0/32"  # TEST-NET-1: nobody here, so 127.0.0.1 is rate limited
LIMITED = {"HANDSHAKE_RATE_EXEMPT": NOT_EXEMPT, "HANDSHAKE_RATE_PER_IP": "1"}  # burst: 5


def handshake(gw: GatewayProcess, query: str = "EIO=4&transport=polling",
              headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(f"{gw.url}/socket.io/?{query}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, dict(exc.headers), exc.read().decode()
        finally:
            exc.close()


def statuses(gw: GatewayProcess, n: int, **kwargs: object) -> list[int]:
    return [handshake(gw, **kwargs)[0] for _ in range(n)]  # type: ignore[arg-type]


def test_rapid_new_sessions_from_one_address_get_429(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, **LIMITED))
    good = uid("good")
    connect_good(node_clients, "good", gw, token(jwt_secret, good))  # spends one of the burst of 5

    got = statuses(gw, 12)
    assert got.count(200) <= 4, got
    assert got[-1] == 429, got
    status, headers, body = handshake(gw)
    assert status == 429
    assert json.loads(body) == {"error": "too_many_connections_from_address"}
    assert headers.get("Retry-After") == "1"
    with pytest.raises(Refused) as refused:  # a WebSocket upgrade too, before anything is allocated
        RawWS.connect(gw.port)
    assert refused.value.status == 429
    node_clients.connect("late", gw.ns_url, token=token(jwt_secret, uid()), transports=["websocket"],
                         reconnection=False)
    record = node_clients.wait_connected("late", timeout=10)
    assert record["type"] == "connect_error", record

    # the connected user is not affected, and the address gets in again once its bucket refills
    pub.emit(EVENT, {**COINS, "n": 0}, user=good).result()
    assert_all_received(node_clients, "good", [0])
    wait_until(lambda: handshake(gw)[0] == 200, 10, "a handshake accepted again after the refill", every=0.5)
    assert metric(gw, "ws_handshakes_total", outcome="ip_rate_limited") >= 8
    assert log_problems(gw) == []


@pytest.mark.parametrize("extra", ["&xsid=1", "&t=sid=0"])
def test_the_rate_cannot_be_dodged_with_sid_in_the_query(
    start_gateway: StartGateway, jwt_secret: str, extra: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret, **LIMITED))
    got = statuses(gw, 12, query="EIO=4&transport=polling" + extra)
    ws_refused = 0
    for _ in range(6):
        try:
            RawWS.connect(gw.port, f"/socket.io/?EIO=4&transport=websocket{extra}").close()
        except Refused:
            ws_refused += 1
    assert got.count(429) >= 6, f"new sessions with {extra!r}: {got}"
    assert ws_refused == 6


def test_x_forwarded_for_is_believed_from_a_trusted_proxy(
    start_gateway: StartGateway, jwt_secret: str,
) -> None:
    """127.0.0.1 is a trusted proxy (the default): each forwarded client has its own bucket,
    and only the hop the proxy appended counts (what the client wrote before it does not)."""
    gw = start_gateway(base_env(jwt_secret, **LIMITED))
    rotating = [handshake(gw, headers={"X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(12)]
    assert rotating == [200] * 12
    one = statuses(gw, 12, headers={"X-Forwarded-For": "203.0.113.7"})
    assert one.count(429) >= 6, one
    assert handshake(gw, headers={"X-Forwarded-For": "203.0.113.8"})[0] == 200, "one client blocked another"
    spoofed = [handshake(gw, headers={"X-Forwarded-For": f"10.9.9.{i}, 203.0.113.9"})[0] for i in range(12)]
    assert spoofed.count(429) >= 6, f"a client's own X-Forwarded-For entries were believed: {spoofed}"


def test_x_forwarded_for_is_ignored_from_anyone_else(
    start_gateway: StartGateway, jwt_secret: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret, TRUSTED_PROXIES="192.0.2.1/32", **LIMITED))
    rotating = [handshake(gw, headers={"X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(12)]
    assert rotating.count(429) >= 6, f"X-Forwarded-For from an untrusted peer was believed: {rotating}"
    exempt = [handshake(gw, headers={"X-Forwarded-For": "192.0.2.0"})[0] for _ in range(3)]
    assert exempt == [429] * 3, "an untrusted peer claimed an exempt address"


def test_a_forwarded_address_is_never_exempt(start_gateway: StartGateway, jwt_secret: str) -> None:
    """A peer in TRUSTED_PROXIES (what any pod is when a cluster trusts a pod range) claims to
    be a local probe: the exemption is for the socket peer only, a forwarded client is limited."""
    gw = start_gateway(base_env(jwt_secret, HANDSHAKE_RATE_PER_IP="1"))  # exempt: 127.0.0.0/8, ::1
    for claimed in ("127.0.0.1", "127.0.0.9", "::1"):
        got = statuses(gw, 12, headers={"X-Forwarded-For": claimed})
        assert got.count(429) >= 6, f"X-Forwarded-For: {claimed} was taken as exempt: {got}"
    assert statuses(gw, 12) == [200] * 12, "the socket peer 127.0.0.1 itself stays exempt"


def test_ipv6_clients_are_limited_by_their_64(start_gateway: StartGateway, jwt_secret: str) -> None:
    gw = start_gateway(base_env(jwt_secret, **LIMITED))
    rotating = [handshake(gw, headers={"X-Forwarded-For": f"2001:db8:7:7::{i:x}"})[0] for i in range(1, 13)]
    assert rotating.count(429) >= 6, f"one /64 rotating its addresses got a bucket per address: {rotating}"
    assert handshake(gw, headers={"X-Forwarded-For": "2001:db8:7:8::1"})[0] == 200, "another /64 is another client"


def test_the_socket_over_max_connections_per_user_is_refused(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, MAX_CONNECTIONS_PER_USER="3"))
    user, other = uid("many"), uid("other")
    for i in range(3):
        connect_good(node_clients, f"tab{i}", gw, token(jwt_secret, user))
    node_clients.connect("tab3", gw.ns_url, token=token(jwt_secret, user), transports=["websocket"])
    refused = node_clients.wait_connected("tab3", timeout=10)
    assert refused["type"] == "connect_error", refused
    assert refused["message"] == "too_many_connections", refused
    assert refused["data"] == {"code": "too_many_connections"}, refused
    connect_good(node_clients, "other", gw, token(jwt_secret, other))  # another user is not counted

    pub.emit(EVENT, {**COINS, "n": 0}, user=user).result()
    for i in range(3):
        assert_all_received(node_clients, f"tab{i}", [0])
    node_clients.assert_no_event("tab3", within=0.3)
    node_clients.disconnect("tab0")
    node_clients.forget("tab3")

    def fourth_accepted() -> bool:
        node_clients.connect("tab3", gw.ns_url, token=token(jwt_secret, user), transports=["websocket"],
                             reconnection=False)
        ok = node_clients.wait_connected("tab3", timeout=10)["type"] == "connect"
        if not ok:
            node_clients.forget("tab3")
        return ok

    wait_until(fourth_accepted, 10, "a socket accepted once one of the three left", every=0.2)
    assert metric(gw, "ws_handshakes_total", outcome="too_many_connections") >= 1
    assert log_problems(gw) == []


def test_max_connections_per_user_holds_when_connects_arrive_together(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, MAX_CONNECTIONS_PER_USER="3"))
    tok = token(jwt_secret, uid("race"))
    transports = []
    for _ in range(12):
        ws = RawWS.connect(gw.port)
        ws.eio_open()
        transports.append(ws)
    for ws in transports:  # all CONNECTs sent before any answer is read
        ws.send_text(f"40{NS}," + json.dumps({"token": tok, "pid": "made-up-pid", "offset": "x:1-1"}))
    replies = [ws.recv_text(5) for ws in transports]
    for ws in transports:
        ws.close()
    accepted = [r for r in replies if r.startswith(f"40{NS},")]
    assert len(accepted) <= 3, f"{len(accepted)} of 12 sockets of one user accepted, limit 3"


def polling_sid(gw: GatewayProcess) -> str:
    status, _, body = handshake(gw)
    assert status == 200, body
    return str(json.loads(body[1:])["sid"])


def test_one_session_cannot_hold_many_upgrade_attempts(start_gateway: StartGateway, jwt_secret: str) -> None:
    gw = start_gateway(base_env(jwt_secret, **LIMITED))
    sid = polling_sid(gw)
    held = []
    for _ in range(20):
        with contextlib.suppress(Refused):
            held.append(RawWS.connect(gw.port, f"/socket.io/?EIO=4&transport=websocket&sid={sid}"))
    time.sleep(1)  # a refused attempt would be closed at once
    open_later = [ws for ws in held if not ws.wait_closed(0.05)]
    for ws in held:
        ws.close()
    assert len(open_later) <= 1, f"{len(open_later)} upgrade attempts held open for one session"


def test_one_session_cannot_hold_many_polls(start_gateway: StartGateway, jwt_secret: str) -> None:
    gw = start_gateway(base_env(jwt_secret))
    sid = polling_sid(gw)
    answers: list[int | str] = []

    def poll() -> None:
        try:
            answers.append(handshake(gw, f"EIO=4&transport=polling&sid={sid}", timeout=2)[0])
        except OSError as exc:  # urllib's timeout: the poll was held
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=poll) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    held = [a for a in answers if not isinstance(a, int)]
    assert len(held) <= 1, f"{len(held)} of 20 concurrent polls held on one session: {answers}"
