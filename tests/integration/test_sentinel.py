"""`REDIS_URL=redis+sentinel://...`: the gateway and the publisher follow a failover.

A primary, a replica and three real sentinels (tests/support/sentinel.py); two gateway
replicas and producers on `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0/mymaster`;
the real socket.io-client. The primary changes once per module parameter: by
`SENTINEL FAILOVER` (the old primary is demoted and the sentinels kill its clients), or by
SIGKILL (the sentinels notice, vote and promote the replica). The `failed_over` fixture
connects clients and a long-lived publisher, checks an event arrives, fails over, and hands the
whole scene to the tests; each test then checks one thing that must hold afterwards, with
event names of its own so that the tests do not see each other's events.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from publisher import Publisher
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.sentinel import SentinelSetup
from tests.support.sio_client import NodeClients

pytestmark = pytest.mark.integration

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
COINS = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}
ENV = {"JWT_SECRET": SECRET, "PUBLISH_API_KEY": API_KEY, "DRAIN_SECONDS": "0",
       "HANDSHAKE_RATE_PER_IP": "10000"}
# The replicas reconnect with a backoff capped at a few seconds: "allow a few seconds".
AFTER_FAILOVER = 20.0
ARRIVAL = 10.0
QUIET = 0.5


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"



def ready(gw: GatewayProcess) -> int | None:
    try:
        return gw.http_get("/readyz", timeout=2)[0]
    except OSError:
        return None


def http_emit(gw: GatewayProcess, body: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(
        gw.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), exc.read().decode()
        finally:
            exc.close()


def connect(clients: NodeClients, name: str, gw: GatewayProcess, user: str, **claims: Any) -> None:
    clients.connect(name, gw.ns_url, token=make_token(SECRET, user, **claims), transports=["websocket"])
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record




@dataclass
class Scene:
    """Everything as it stands after the failover."""

    how: str
    sentinels: SentinelSetup
    cluster: GatewayCluster
    clients: NodeClients
    early: Publisher  # made and used before the failover
    alice: str  # on replica 0
    bob: str  # on replica 1
    classroom: str  # both are in it
    old: int = 0
    new: int = 0
    notes: list[str] = field(default_factory=list)

    def logs(self) -> str:
        parts = [f"-- {r.name} log:\n{r.log_tail(60)}" for r in self.cluster]
        return "\n".join([*parts, self.sentinels.logs(15)])


@pytest.fixture(scope="module", params=["sentinel_failover", "primary_killed"])
def failed_over(request: pytest.FixtureRequest) -> Iterator[Scene]:
    how = request.param
    with SentinelSetup() as sentinels, GatewayCluster(2, sentinels.url, ENV) as cluster, \
            NodeClients() as clients, Publisher(sentinels.url) as early:
        r0, r1 = cluster
        scene = Scene(how, sentinels, cluster, clients, early, uid(), uid(), f"k{uuid.uuid4().hex[:8]}")
        connect(clients, "alice", r0, scene.alice, classrooms=[scene.classroom])
        connect(clients, "bob", r1, scene.bob, classrooms=[scene.classroom])
        early.emit("before:failover", {"n": 0}, room=f"classroom:{scene.classroom}").result()
        # the replicas' own publishing path too, so that it holds connections to the old primary
        for replica in cluster:
            status, body = http_emit(replica, {"event": "before:http", "data": {"n": 0},
                                               "room": f"classroom:{scene.classroom}"})
            assert status == 200, body
        for name in ("alice", "bob"):
            assert clients.wait_events(name, "before:failover", 1)[0].payload == {"n": 0}
            assert len(clients.wait_events(name, "before:http", 2)) == 2

        scene.old = sentinels.primary_port()
        if how == "sentinel_failover":
            scene.new = sentinels.failover()
        else:
            sentinels.kill_primary()
            for replica in cluster:
                wait_until(lambda replica=replica: ready(replica) == 503, 5,
                           f"{replica.name} not ready without a primary", every=0.05)
            scene.new = sentinels.wait_promoted(scene.old)
        assert scene.new != scene.old
        yield scene
        assert not clients.problems(), clients.problems()


@pytest.fixture(autouse=True)
def scene_logs(failed_over: Scene) -> Iterator[None]:
    yield
    print(failed_over.logs())


def test_replicas_are_ready_on_the_new_primary(failed_over: Scene) -> None:
    for replica in failed_over.cluster:
        wait_until(lambda replica=replica: ready(replica) == 200, AFTER_FAILOVER,
                   f"{replica.name} ready after the failover")
        assert replica.alive()


def test_connected_clients_get_events_published_after_the_failover(failed_over: Scene) -> None:
    scene = failed_over
    clients = scene.clients
    # a producer that starts now: the gateway's side of the failover alone
    with Publisher(scene.sentinels.url) as pub:
        pub.emit("after:user", {"to": "alice"}, user=scene.alice).result()
        pub.emit("after:user", {"to": "bob"}, user=scene.bob).result()
        pub.emit("after:room", {"n": 1}, room=f"classroom:{scene.classroom}").result()
        pub.emit("after:all", {"n": 2}, broadcast=True).result()
    for name in ("alice", "bob"):
        [event] = clients.wait_events(name, "after:user", 1, timeout=AFTER_FAILOVER)
        assert event.payload == {"to": name}
        assert clients.wait_events(name, "after:room", 1, timeout=ARRIVAL)[0].payload == {"n": 1}
        assert clients.wait_events(name, "after:all", 1, timeout=ARRIVAL)[0].payload == {"n": 2}
    for name in ("alice", "bob"):
        clients.assert_no_event(name, "after:user", within=QUIET / 2, allowed=1)


def test_new_connections_after_the_failover(failed_over: Scene) -> None:
    scene = failed_over
    for replica in scene.cluster:
        wait_until(lambda replica=replica: ready(replica) == 200, AFTER_FAILOVER, f"{replica.name} ready")
    carol = uid()
    connect(scene.clients, f"carol-{scene.how}", scene.cluster[1], carol)
    with Publisher(scene.sentinels.url) as pub:
        pub.emit("new:connection", COINS, user=carol).result()
    assert scene.clients.wait_events(f"carol-{scene.how}", "new:connection", 1, timeout=ARRIVAL)


def test_http_emit_after_the_failover(failed_over: Scene) -> None:
    scene = failed_over
    r1 = scene.cluster[1]
    for replica in scene.cluster:
        wait_until(lambda replica=replica: ready(replica) == 200, AFTER_FAILOVER, f"{replica.name} ready")
    status, body = http_emit(r1, {"event": "http:after", "user": scene.alice, "data": {"n": 3}})
    assert status == 200, body
    assert scene.clients.wait_events("alice", "http:after", 1, timeout=ARRIVAL)[0].payload == {"n": 3}


def test_a_publisher_from_before_the_failover_follows_it(failed_over: Scene) -> None:
    scene = failed_over
    for replica in scene.cluster:
        wait_until(lambda replica=replica: ready(replica) == 200, AFTER_FAILOVER, f"{replica.name} ready")
    scene.early.emit("early:after", {"n": 4}, room=f"classroom:{scene.classroom}").result()
    for name in ("alice", "bob"):
        assert scene.clients.wait_events(name, "early:after", 1, timeout=ARRIVAL)[0].payload == {"n": 4}
