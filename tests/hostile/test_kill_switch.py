"""The kill switch: `Publisher.disconnect_user` on a user connected to two replicas (Redis bus)
drops every socket of the user, on both, with a Socket.IO DISCONNECT (socket.io-client does not
come back by itself); none of the user's sessions can be recovered afterwards, not with the old
pid and offset presented to either replica, not by a tab that was away during the kick; other
users on both replicas keep receiving."""

from __future__ import annotations

import json

from publisher import Publisher
from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, RawWS
from tests.hostile.support import (
    COINS,
    EVENT,
    Feeder,
    assert_all_received,
    base_env,
    connect_good,
    log_problems,
    token,
    uid,
    wait_until,
)
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

FAST = {"reconnectionDelay": 100, "reconnectionDelayMax": 200}


def test_disconnect_user_drops_both_replicas_and_no_session_comes_back(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    env = base_env(jwt_secret, REDIS_URL=shared_redis.url, RECOVERY_WINDOW="60")
    r0, r1 = start_gateway(env), start_gateway(env)
    user, bystander = uid("revoked"), uid("bystander")
    connect_good(node_clients, "a0", r0, token(jwt_secret, user))
    connect_good(node_clients, "a1", r1, token(jwt_secret, user), transport="polling")
    connect_good(node_clients, "away", r1, token(jwt_secret, user), **FAST)
    connect_good(node_clients, "b0", r0, token(jwt_secret, bystander))
    connect_good(node_clients, "b1", r1, token(jwt_secret, bystander))
    pub.emit(EVENT, {**COINS, "n": 0}, user=user).result()
    old = {}
    for name in ("a0", "a1", "away"):
        [event] = node_clients.wait_events(name, EVENT, 1)
        state = node_clients.state(name)
        assert state["pid"], "recovery is on: every socket has a pid"
        old[name] = (state["sid"], state["pid"], event.offset)
    # one tab is away (its transport dropped, reconnecting to a closed port) during the kick
    node_clients.set_uri("away", f"http://127.0.0.1:{free_port()}")
    node_clients.close_transport("away")
    assert node_clients.wait_disconnected("away")["retrying"] is True

    with Feeder(pub, bystander, least=100) as feeder:
        pub.disconnect_user(user)
        for name in ("a0", "a1"):
            dropped = node_clients.wait_disconnected(name, timeout=5)
            assert dropped["reason"] == "io server disconnect", dropped
            assert dropped["retrying"] is False, dropped
        pub.emit(EVENT, {**COINS, "n": 1}, user=user).result()  # must never be replayed to the old sessions
    for name in ("b0", "b1"):
        received = assert_all_received(node_clients, name, feeder.sent)
    wait_until(lambda: not pub.is_online(user), 20, "the revoked user offline everywhere")
    redis = shared_redis.client()
    try:
        left = [pid for _, pid, _ in old.values() if redis.exists(f"ngw:{{user:{user}}}:s:{pid}")]
    finally:
        redis.close()
    assert left == [], "sessions of the revoked user are still recoverable in Redis"

    # the old pids and offsets, presented with a valid token of the same user, to both replicas
    for replica in (r0, r1):
        for name, (sid, pid, offset) in old.items():
            with RawWS.connect(replica.port) as ws:
                ws.eio_open()
                reply = ws.sio_connect({"token": token(jwt_secret, user), "pid": pid, "offset": offset})
                assert reply.startswith(f"40{NS},{{"), reply
                fresh = json.loads(reply[len(f"40{NS},"):])
                assert fresh["sid"] != sid, f"{name}'s session was restored on {replica.name}"
                assert fresh["pid"] != pid
                try:
                    extra = ws.recv_text(0.5)
                except TimeoutError:
                    extra = ""
                assert not extra.startswith(f"42{NS},"), f"an event was replayed to a revoked session: {extra}"

    # the tab that was away comes back to a replica: a new session, nothing replayed
    node_clients.set_uri("away", r0.url)
    back = node_clients.wait_connected("away", timeout=10)
    assert back["type"] == "connect", back
    assert back["recovered"] is False
    assert back["sid"] != old["away"][0]
    node_clients.assert_no_event("away", EVENT, within=0.5, allowed=1)  # the one before it left

    print(f"\nkill switch: 2 replicas, 3 sockets of the user dropped or not recovered, 6 recovery attempts with "
          f"the old pids refused; each bystander received {received} of {len(feeder.sent)} events")
    assert log_problems(r0) == []
    assert log_problems(r1) == []
