"""The bus going away and coming back: the bus metrics and readiness across a Redis restart,
events published during a pub/sub outage caught up and counted, readiness while Redis
refuses connections, presence after Redis was slow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from publisher import Publisher
from tests.e2e.conftest import StartGateway
from tests.e2e.operations.support import (
    BASE_ENV,
    EVENT,
    WAIT,
    Scrape,
    assert_no_user_ids,
    connect,
    delta,
    emit_http,
    json_lines,
    numbers,
    payload,
    scrape,
    settle,
    token,
    uid,
    wait_delta,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients


def test_bus_metrics_and_readiness_across_a_redis_restart(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway,
) -> None:
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url})
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    with Publisher(redis_server.url) as pub:
        pub.emit(EVENT, payload(0), room=f"user:{user}").result()
        node_clients.wait_events("a", EVENT, 1)
    before = scrape(gw)
    assert before.value("bus_connected") == 1
    assert gw.http_get("/readyz")[0] == 200

    redis_server.kill()
    wait_until(lambda: scrape(gw).value("bus_connected") == 0, WAIT, "bus_connected drops to 0")
    status, body = gw.http_get("/readyz")
    assert status == 503, (status, body)
    assert json.loads(body)["reason"] == "bus_disconnected", body
    assert gw.http_get("/healthz")[0] == 200, "liveness does not depend on Redis"
    good = json.dumps({"event": EVENT, "user": user, "data": payload(1)}).encode()
    assert emit_http(gw, good) == 503
    wait_delta(gw, before, "http_emit_total", 1, outcome="bus_unavailable")
    assert node_clients.state("a")["connected"] is True, "sockets stay while the bus is away"

    redis_server.start()  # same port, empty: the user's room's history is gone
    wait_until(lambda: scrape(gw).value("bus_connected") == 1, 20, "bus_connected back to 1")
    wait_until(lambda: gw.http_get("/readyz")[0] == 200, WAIT, "ready again")
    # Counted once the new connection has resubscribed and caught up.
    wait_until(lambda: delta(gw, before, "bus_reconnects_total") >= 1, WAIT, "bus_reconnects_total rises")
    # v2 (docs/wire-protocol.md, "Recovery, exactly"; gateway/delivery/catchup.py): the room's
    # stream is gone, so what it missed cannot be known: never a short catch-up, the socket's
    # transport is closed and its client comes back told `recovered: false`.
    wait_delta(gw, before, "bus_events_total", 1, event="catchup_gap")
    dropped = node_clients.wait_disconnected("a", timeout=WAIT)
    assert (dropped["reason"], dropped["retrying"]) == ("transport close", True), dropped
    back = node_clients.wait_connected("a", timeout=WAIT)
    assert (back["type"], back["recovered"]) == ("connect", False), back
    with Publisher(redis_server.url) as pub:
        pub.emit(EVENT, payload(2), room=f"user:{user}").result()
        events = node_clients.wait_events("a", EVENT, 2, timeout=WAIT)
    assert numbers(events) == [0, 2]
    node_clients.assert_no_event("a", EVENT, within=0.3, allowed=2)
    assert_no_user_ids(scrape(gw), [user])


@dataclass
class Outage:
    """What was seen around a pub/sub outage while Redis kept its data (see `pubsub_outage`)."""

    before: Scrape
    after: Scrape
    received: list[int]
    published: list[int]
    readiness: list[tuple[int, float]]  # (/readyz status, bus_connected), sampled while refused


@pytest.fixture(scope="module")
def pubsub_outage() -> Iterator[Outage]:
    """A replica's pub/sub connection is cut while Redis cannot take new connections (it is at
    `maxclients`, a real incident) and keeps its data; three events are published meanwhile
    (over a connection opened before), then Redis takes connections again. Run once for the
    tests below, on a Redis and a replica of its own."""
    server = RedisServer().start()
    gw = GatewayProcess({**BASE_ENV, "REDIS_URL": server.url}, name="outage")
    try:
        gw.start().wait_ready(20)
        with NodeClients() as clients, Publisher(server.url) as pub:
            user = uid()
            connect(clients, "a", gw.ns_url, token(user))
            pub.emit(EVENT, payload(0), room=f"user:{user}").result()
            clients.wait_events("a", EVENT, 1)
            before = scrape(gw)
            admin = server.client()
            try:
                admin.config_set("maxclients", 1)
                assert admin.client_kill_filter(_type="pubsub") >= 1
                readiness = []
                published = [0]
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    status, _ = gw.http_get("/readyz")
                    readiness.append((status, scrape(gw).value("bus_connected")))
                    if len(published) < 4 and time.monotonic() > deadline - 2.0:
                        n = len(published)
                        pub.emit(EVENT, payload(n), room=f"user:{user}").result()
                        published.append(n)
                    time.sleep(0.05)
            finally:
                admin.config_set("maxclients", 10000)
                admin.close()
            clients.wait_events("a", EVENT, len(published), timeout=20)
            received = settle(clients, "a", len(published))
            wait_until(lambda: delta(gw, before, "bus_reconnects_total") >= 1, WAIT, "a reconnection counted")
            yield Outage(before, scrape(gw), received, published, readiness)
    finally:
        gw.stop()
        server.stop()


def test_events_published_while_the_bus_was_away_are_caught_up(pubsub_outage: Outage) -> None:
    assert pubsub_outage.received == pubsub_outage.published == [0, 1, 2, 3]
    assert pubsub_outage.after.value("bus_connected") == 1
    assert pubsub_outage.after.value("bus_reconnects_total") - pubsub_outage.before.value("bus_reconnects_total") >= 1


def test_events_caught_up_after_a_bus_outage_are_counted(pubsub_outage: Outage) -> None:
    caught_up = len(pubsub_outage.published) - 1
    moved = {
        name: pubsub_outage.after.value(name, **labels) - pubsub_outage.before.value(name, **labels)
        for name, labels in (("ws_messages_sent_total", {"event": EVENT}),
                             ("ws_replayed_messages_total", {}),
                             ("bus_deliveries_total", {}))
    }
    assert moved == {"ws_messages_sent_total": caught_up, "ws_replayed_messages_total": caught_up,
                     "bus_deliveries_total": caught_up}, moved


def test_readiness_says_no_while_redis_refuses_the_bus(pubsub_outage: Outage) -> None:
    # After the cut, the replica has no working subscription for the whole sampled time (the
    # first 0.5 s are left out: the cut itself takes a moment to be noticed).
    samples = pubsub_outage.readiness[10:]
    assert samples
    wrong = [s for s in samples if s != (503, 0.0)]
    assert not wrong, f"{len(wrong)} of {len(samples)} samples say ready/connected: {wrong[:5]}"


def test_users_who_leave_are_offline_at_once_after_redis_was_slow(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway,
) -> None:
    """Redis pauses writes for a second (a slow Redis, a failover): the replica's writes pile
    up in one batch. Presence must still follow: users who left are offline right after."""
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url})
    users = {name: uid() for name in ("x", "w", "v")}
    for name, user in users.items():
        connect(node_clients, name, gw.ns_url, token(user))
    with Publisher(redis_server.url) as pub:
        wait_until(lambda: all(pub.is_online(u) for u in users.values()), 5, "everyone online")
        admin = redis_server.client()
        try:
            admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
            node_clients.disconnect("x")  # its writes wait for Redis...
            time.sleep(0.2)
            node_clients.disconnect("w")  # ...and these two pile up behind them
            node_clients.disconnect("v")
        finally:
            admin.close()
        # The pause ends after a second; "within a second" of that (the contract) plus slack.
        wait_until(lambda: not any(pub.is_online(u) for u in users.values()), 3.0,
                   "everyone who left is offline")
    failed = [line for line in json_lines(gw) if line["msg"].startswith("bus write batch failed")]
    assert not failed, failed
