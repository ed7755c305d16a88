"""Issue 12, items 1 and 8: one transport cannot loop CONNECTs, nor repeat packets before one.

Before: on one WebSocket, `40/notifications,{token}` then `41/notifications,` in a loop made a
session record and an index member in Redis per cycle (3,000 in 4 s), and refused CONNECTs or
early EVENTs could be repeated until HANDSHAKE_TIMEOUT. Now every CONNECT, and every packet of
a transport with no connected socket, spends from the transport's small budget; past it the
transport is closed. A client that leaves the namespace itself will not come back, so its
session is forgotten at once (Node's socket.io keeps none either).
"""

from __future__ import annotations

import orjson
import redis

from tests.hostile.rawws import Closed, RawWS
from tests.hostile.support import base_env, metrics, token, uid, wait_until

NS = "/notifications"


def _cycles(ws: RawWS, auth: object, count: int) -> int:
    """CONNECT/DISCONNECT cycles until the server closes the transport; how many went through."""
    done = 0
    try:
        for _ in range(count):
            ws.send_text(f"40{NS}," + orjson.dumps(auth).decode())
            reply = ws.recv_text(2.0)
            while reply == "2":  # a PING in between
                ws.send_text("3")
                reply = ws.recv_text(2.0)
            if not reply.startswith(f"40{NS},"):
                break
            ws.send_text(f"41{NS},")
            done += 1
    except (Closed, OSError, TimeoutError):
        pass
    return done


def test_a_connect_disconnect_loop_is_cut_and_leaves_nothing_in_redis(
        start_gateway, jwt_secret, shared_redis) -> None:  # type: ignore[no-untyped-def]
    prefix = uid("k")
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, KEY_PREFIX=prefix))
    user = uid()
    with RawWS.connect(gw.port) as ws:
        ws.eio_open()
        done = _cycles(ws, {"token": token(jwt_secret, user)}, 200)
        assert 1 <= done <= 5, f"{done} CONNECT/DISCONNECT cycles went through on one transport"
        assert ws.wait_closed(5.0)
    r = redis.Redis.from_url(shared_redis.url)
    # the client left by itself each time: no session is kept, and the index is empty
    # v2 names (docs/wire-protocol.md): ngw:{user:<id>}:s:<pid>, ngw:{user:<id>}:sessions
    wait_until(lambda: not r.keys(f"{prefix}:{{user:*}}:s:*"), 5.0, "sessions of a client that left were kept")
    assert r.zcard(f"{prefix}:{{user:{user}}}:sessions") == 0
    wait_until(lambda: metrics(gw).get(("ws_errors_total", (("kind", "connect_flood"),)), 0) >= 1, 5.0,
               "connect_flood not counted")


def test_refused_connects_and_early_events_spend_the_same_budget(start_gateway, jwt_secret) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(base_env(jwt_secret))
    with RawWS.connect(gw.port) as ws:
        ws.eio_open()
        answered = 0
        try:
            for i in range(100):
                if i % 2:
                    ws.send_text(f"42{NS},[\"subscribe:notifications\"]")  # an EVENT before any CONNECT
                else:
                    ws.send_text(f"40{NS}," + orjson.dumps({"token": "not-a-jwt"}).decode())
                    if ws.recv_text(2.0).startswith(f"44{NS},"):
                        answered += 1
        except (Closed, OSError, TimeoutError):
            pass
        assert answered <= 5
        assert ws.wait_closed(5.0)
    # the replica serves everyone else
    with RawWS.connect(gw.port) as other:
        other.eio_open()
        assert other.sio_connect({"token": token(jwt_secret, uid())}).startswith(f"40{NS},")


def test_early_events_alone_exhaust_the_budget(start_gateway, jwt_secret) -> None:  # type: ignore[no-untyped-def]
    """Early EVENTs spend the budget by themselves (the test above mixes them with refused
    CONNECTs, which would close the transport even if EVENTs cost nothing)."""
    # A handshake timeout far longer than the wait below: only the budget can close it.
    gw = start_gateway(base_env(jwt_secret, HANDSHAKE_TIMEOUT="60"))
    with RawWS.connect(gw.port) as ws:
        ws.eio_open()
        try:
            for _ in range(200):
                ws.send_text(f"42{NS},[\"subscribe:notifications\"]")  # no CONNECT ever
        except (Closed, OSError):
            pass
        assert ws.wait_closed(5.0), "200 EVENTs before any CONNECT left the transport open"
    with RawWS.connect(gw.port) as other:
        other.eio_open()
        assert other.sio_connect({"token": token(jwt_secret, uid())}).startswith(f"40{NS},")
