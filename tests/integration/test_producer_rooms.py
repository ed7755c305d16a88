"""Producers get what the contract allows (issue 12, item 12), against real replicas and a real
redis-server: any room name under the grammar of docs/wire-protocol.md ("Room names"), and any
JSON payload on `emit`, the schema checked only where the producer asks (`strict`, the typed
helpers). What the room policy forbids a user, no producer call grants."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from publisher import InvalidPayload, Publisher
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

pytestmark = pytest.mark.integration

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
ENV = {"JWT_SECRET": SECRET, "PUBLISH_API_KEY": API_KEY, "DRAIN_SECONDS": "0",
       "HANDSHAKE_RATE_PER_IP": "10000"}
QUIET = 0.5


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def connect(clients: NodeClients, name: str, gw: GatewayProcess, user: str, **claims: Any) -> None:
    clients.connect(name, gw.ns_url, token=make_token(SECRET, user, **claims), transports=["websocket"])
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record


def http_emit(gw: GatewayProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        gw.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read())
        finally:
            exc.close()


@pytest.fixture(scope="module")
def pair(shared_redis: RedisServer) -> Iterator[GatewayCluster]:
    with GatewayCluster(2, shared_redis.url, ENV) as replicas:
        yield replicas
        for replica in replicas:
            print(f"-- {replica.name} log:\n{replica.log_tail(80)}")


@pytest.fixture(scope="module")
def pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher


def test_a_producer_joins_a_user_to_a_room_of_its_own_naming(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher,
) -> None:
    """The contract's `pub.join(user_id, room)` with the room of the issue, `quiz:<id>`."""
    r0, r1 = pair
    player, other = uid(), uid()
    quiz = f"quiz:{uuid.uuid4().hex[:8]}"
    connect(clients, "player", r0, player)
    connect(clients, "player-tab", r1, player)
    connect(clients, "other", r1, other)

    pub.join(player, quiz)
    pub.emit("quiz:started", {"n": 1}, room=quiz).result()
    status, answer = http_emit(r1, {"event": "quiz:started", "room": quiz, "data": {"n": 2}})
    assert status == 200, answer
    for name in ("player", "player-tab"):
        events = clients.wait_events(name, "quiz:started", 2)
        assert [e.payload["n"] for e in events] == [1, 2], name
    clients.assert_no_event("other", within=QUIET)

    pub.leave(player, quiz)
    pub.emit("quiz:started", {"n": 3}, room=quiz).result()
    pub.emit("quiz:started", {"n": 4}, user=player).result()  # a later event: the leave was applied first
    for name in ("player", "player-tab"):
        assert clients.wait_events(name, "quiz:started", 3)[-1].payload["n"] == 4, name


def test_a_classroom_wide_notification_has_no_user_id(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher,
) -> None:
    r0, r1 = pair
    classroom = uuid.uuid4().hex[:8]
    connect(clients, "a", r0, uid(), classrooms=[classroom])
    connect(clients, "b", r1, uid(), classrooms=[classroom])
    notification = {"id": "n1", "userId": None, "type": "announcement", "title": "Quiz at 10",
                    "message": "Bring a pencil", "read": False, "createdAt": "2024-05-01T08:00:00.000Z"}
    pub.emit("notification:new", notification, room=f"classroom:{classroom}").result()
    status, answer = http_emit(r0, {"event": "notification:new", "room": f"classroom:{classroom}",
                                    "data": {**notification, "id": "n2"}})
    assert status == 200, answer
    for name in ("a", "b"):
        events = clients.wait_events(name, "notification:new", 2)
        assert [e.payload for e in events] == [notification, {**notification, "id": "n2"}], name


def test_the_schema_is_checked_where_the_producer_asks(pair: GatewayCluster, shared_redis: RedisServer) -> None:
    bad = {"amount": "fifty", "reason": "quiz", "newBalance": 1}
    with Publisher(shared_redis.url, strict=True) as strict, pytest.raises(InvalidPayload, match="amount"):
        strict.emit("coins:earned", bad, user=uid()).result()
    with Publisher(shared_redis.url) as lax:
        with pytest.raises(InvalidPayload, match="amount"):
            lax.emit("coins:earned", bad, user=uid(), strict=True).result()
        with pytest.raises(ValueError, match="amount must be an integer"):
            lax.coins_earned(uid(), amount="fifty", reason="quiz", new_balance=1).result()  # type: ignore[arg-type]
    status, answer = http_emit(pair[0], {"event": "coins:earned", "user": uid(), "data": bad, "strict": True})
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert "amount" in answer["detail"]


def test_no_producer_call_grants_what_the_policy_forbids(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher,
) -> None:
    r0, _ = pair
    student, other = uid(), uid()
    connect(clients, "student", r0, student)
    marker = f"lobby-{uuid.uuid4().hex[:8]}"
    pub.join(student, ["admin:all", f"teacher:{student}", marker])
    pub.emit("coins:earned", {"to": "admin"}, room="admin:all").result()
    pub.emit("coins:earned", {"to": "teacher"}, room=f"teacher:{student}").result()
    pub.emit("coins:earned", {"to": "user:other"}, user=other).result()
    pub.emit("coins:earned", {"to": "marker"}, room=marker).result()  # after the others: they came first
    [event] = clients.wait_events("student", "coins:earned", 1)
    assert event.payload == {"to": "marker"}
    clients.assert_no_event("student", "coins:earned", within=QUIET, allowed=1)


def test_a_leave_right_after_a_join_is_not_overtaken_by_it(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher,
) -> None:
    """A producer's join waits on the bus (subscription, history after its position) while a leave
    is applied at once: a leave arriving during the join must still win, as it came last."""
    r0, _ = pair
    user = uid()
    connect(clients, "flip", r0, user)
    rooms = [f"quiz:{uuid.uuid4().hex[:8]}" for _ in range(8)]
    for room in rooms:
        pub.join(user, room)
        pub.leave(user, room)
    for n, room in enumerate(rooms):
        pub.emit("quiz:question", {"n": n}, room=room)
    pub.emit("quiz:question", {"n": "mine"}, user=user)  # a marker the socket does get, last
    clients.wait_events("flip", "quiz:question", 1)
    got = [e.payload["n"] for e in clients.events("flip", "quiz:question")]
    assert got == ["mine"], f"left rooms still delivered: {got}"
