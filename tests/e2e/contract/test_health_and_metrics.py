"""Health, readiness and the contract's metrics (docs/contract.md, "Operating it").
"""

from __future__ import annotations

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    BASE_ENV,
    COINS,
    connect,
    emit_http,
    sample,
    token,
    uid,
)
from tests.support.checks import scrape, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients


def test_healthz_and_readyz(gw: GatewayProcess) -> None:
    assert gw.http_get("/healthz")[0] == 200
    assert gw.http_get("/readyz")[0] == 200


def test_metrics_count_connections_messages_and_latency(node_clients: NodeClients,
                                                        start_gateway: StartGateway) -> None:
    # A replica of its own: sockets of other tests (a polling client that went away without a
    # word lingers until its ping timeout) would blur the gauge.
    gw = start_gateway(BASE_ENV)
    user, other = uid(), uid()
    before = scrape(gw)
    assert ("ws_connections_active", ()) in before
    connect(node_clients, "a1", gw, token(user))
    connect(node_clients, "a2", gw, token(user), "polling")
    connect(node_clients, "b", gw, token(other))
    assert sample(scrape(gw), "ws_connections_active") == 3
    status, _ = emit_http(gw, {"event": "coins:earned", "user": user, "data": COINS})
    assert status == 200
    for name in ("a1", "a2"):
        node_clients.wait_events(name, "coins:earned", 1)
    after = scrape(gw)
    sent = "ws_messages_sent_total"
    assert sample(after, sent, event="coins:earned") - sample(before, sent, event="coins:earned") == 2
    latency = "ws_latency_seconds_count"
    assert sample(after, latency) - sample(before, latency) == 2
    status, body = gw.http_get("/metrics")
    assert status == 200
    assert "# TYPE ws_connections_active gauge" in body
    assert "# TYPE ws_messages_sent_total counter" in body or "# TYPE ws_messages_sent counter" in body
    assert "# TYPE ws_errors_total counter" in body or "# TYPE ws_errors counter" in body
    assert "# TYPE ws_latency_seconds histogram" in body
    status, _ = emit_http(gw, {"event": f"custom:{user}", "user": user, "data": {}})
    assert status == 200
    node_clients.wait_events("a1", f"custom:{user}", 1)
    status, body = gw.http_get("/metrics")
    assert user not in body, "a metric label holds a user id"
    assert other not in body, "a metric label holds a user id"
    node_clients.disconnect("b")
    wait_until(lambda: sample(scrape(gw), "ws_connections_active") == 2, 5,
               "ws_connections_active follows a disconnect")
