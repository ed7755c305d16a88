"""Events a client sends: unknown ones refused (with the ack's error, or silently without an
ack) and counted, rate-limited ones refused with the same shape; the socket stays usable.
"""

from __future__ import annotations

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    BASE_ENV,
    BOTH,
    QUIET,
    connect,
    rooms_of,
    sample,
    token,
    uid,
)
from tests.support.checks import scrape
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients


@BOTH
def test_unknown_events_are_refused_and_counted(node_clients: NodeClients, gw: GatewayProcess,
                                                transport: str) -> None:
    connect(node_clients, "a", gw, token(), transport)
    before = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    names = ["hello", "notification:new", "coins:earned", "subscribe:notification"]
    for name in names:
        assert node_clients.emit("a", name, {"x": 1}) == {"ok": False, "error": "unknown_event"}
    assert node_clients.emit("a", "no:payload") == {"ok": False, "error": "unknown_event"}
    after = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    assert after - before == len(names) + 1
    # refused, not dropped: the socket stays connected and usable
    assert node_clients.state("a")["connected"] is True
    assert rooms_of(node_clients, "a")


@BOTH
def test_unknown_events_without_ack_are_refused_silently(node_clients: NodeClients,
                                                         gw: GatewayProcess, transport: str) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user), transport)
    before = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    for i in range(3):
        node_clients.emit("a", f"silent:{i}", {"i": i}, ack=False)
    # one client's events are handled in order: once this is acked, the three were handled
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    node_clients.assert_no_event("a", within=QUIET)
    assert [r["type"] for r in node_clients.log("a")] == ["connect"]
    assert sample(scrape(gw), "ws_errors_total", kind="unknown_event") - before == 3


def test_rate_limited_events_are_refused_with_the_same_shape(node_clients: NodeClients,
                                                              start_gateway: StartGateway) -> None:
    replica = start_gateway({**BASE_ENV, "RATE_LIMIT_EVENTS": "0.1", "RATE_LIMIT_BURST": "3",
                             "RATE_LIMIT_DISCONNECT_AFTER": "1000"})
    node_clients.connect("a", replica.ns_url, token=token(), transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    acks = [node_clients.emit("a", "subscribe:notifications") for _ in range(6)]
    assert [a["ok"] for a in acks[:3]] == [True, True, True]
    assert acks[3:] == [{"ok": False, "error": "rate_limited"}] * 3
    assert sample(scrape(replica), "ws_errors_total", kind="rate_limited") == 3
    assert node_clients.state("a")["connected"] is True
