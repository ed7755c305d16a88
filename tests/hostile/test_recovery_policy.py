"""Issue 12, item 2: a recovery rejoins only what the new token and the room policy allow.

Before: `recover_rooms` rejoined the session's stored rooms without asking the policy, so a
token downgrade (classrooms removed) was ignored for as long as the client kept recovering,
and a producer's `join(student, "admin:all")`, refused live, was granted after any dropped
transport (the publisher had written it into the session record).
"""

from __future__ import annotations

from typing import Any

import orjson

from publisher import Publisher
from tests.hostile.rawws import RawWS
from tests.hostile.support import base_env, token, uid, wait_until

NS = "/notifications"


def _connect(port: int, auth: dict[str, Any]) -> tuple[RawWS, dict[str, Any]]:
    ws = RawWS.connect(port)
    ws.eio_open()
    reply = ws.sio_connect(auth)
    assert reply.startswith(f"40{NS},{{"), reply
    return ws, orjson.loads(reply[len(f"40{NS},"):])


def _rooms(ws: RawWS) -> list[str]:
    ws.send_text(f"42{NS},1[\"subscribe:notifications\"]")
    while True:
        text = ws.recv_text(5.0)
        if text == "2":
            ws.send_text("3")
        elif text.startswith(f"43{NS},1"):
            ack: list[dict[str, Any]] = orjson.loads(text[len(f"43{NS},1"):])
            return list(ack[0]["rooms"])


def _events(ws: RawWS, seconds: float) -> list[Any]:
    out = []
    try:
        while True:
            text = ws.recv_text(seconds)
            if text == "2":
                ws.send_text("3")
            elif text.startswith(f"42{NS},"):
                out.append(orjson.loads(text[len(f"42{NS},"):]))
    except TimeoutError:
        return out


def test_a_recovery_drops_rooms_the_new_token_no_longer_grants(start_gateway, jwt_secret, shared_redis) -> None:  # type: ignore[no-untyped-def]
    prefix = uid("k")
    env = base_env(jwt_secret, REDIS_URL=shared_redis.url, KEY_PREFIX=prefix)
    gw = start_gateway(env)
    user, room = uid(), uid("c")
    ws, first = _connect(gw.port, {"token": token(jwt_secret, user, classrooms=[room])})
    assert f"classroom:{room}" in _rooms(ws)
    ws.close()  # the transport drops: the session is kept
    downgraded = token(jwt_secret, user, classrooms=[])
    back, reply = _connect(gw.port, {"token": downgraded, "pid": first["pid"]})
    with back:
        assert reply["sid"] == first["sid"], "not recovered"
        assert _rooms(back) == [f"user:{user}"]
        with Publisher(shared_redis.url, key_prefix=prefix) as pub:
            pub.emit("coins:earned", {"amount": 1, "reason": "r", "newBalance": 1}, room=f"classroom:{room}").result()
        assert _events(back, 1.0) == []


def test_a_room_the_policy_forbids_is_granted_neither_live_nor_after_a_recovery(
        start_gateway, jwt_secret, shared_redis) -> None:  # type: ignore[no-untyped-def]
    prefix = uid("k")
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, KEY_PREFIX=prefix))
    # A few users in turn: the transport drops right after the join took effect, and whether
    # the recovery then loses the joined room depends on timing (see the xfail).
    for _ in range(5):
        user, granted = uid(), f"classroom:{uid('c')}"
        student = token(jwt_secret, user)
        ws, first = _connect(gw.port, {"token": student})
        with Publisher(shared_redis.url, key_prefix=prefix) as pub:
            pub.join(user, ["admin:all", granted])
            wait_until(lambda granted=granted, ws=ws: granted in _rooms(ws), 5.0,
                       "the producer's join did not arrive")
            assert "admin:all" not in _rooms(ws)
            ws.close()
            back, reply = _connect(gw.port, {"token": student, "pid": first["pid"]})
            with back:
                assert reply["sid"] == first["sid"], "not recovered"
                rooms = _rooms(back)
                assert granted in rooms  # a room the policy allows a producer to grant is kept
                assert "admin:all" not in rooms
                pub.emit("coins:earned", {"amount": 1, "reason": "r", "newBalance": 1}, room="admin:all").result()
                assert _events(back, 1.0) == []
