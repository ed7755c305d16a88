"""What /metrics exports: every family with its type and label names, parsed with
prometheus_client's parser, and the Grafana dashboard showing every one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.operations.support import (
    EVENT,
    Replica,
    assert_no_user_ids,
    connect,
    emit_http,
    payload,
    scrape,
    token,
    uid,
)
from tests.support.checks import wait_until
from tests.support.sio_client import NodeClients

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "dashboard.json"


# Every family the gateway exports (besides prometheus_client's process_*), its type, and the
# label names of its samples (histograms: `le` on the buckets only). A new metric must be
# added here, to the dashboard and to its test (tests/unit/test_deploy_manifests.py).
FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "ws_connections_active": ("gauge", frozenset()),
    "ws_messages_sent": ("counter", frozenset({"event"})),
    "ws_errors": ("counter", frozenset({"kind"})),
    "ws_latency_seconds": ("histogram", frozenset()),
    "ws_handshakes": ("counter", frozenset({"outcome"})),
    "ws_recoveries": ("counter", frozenset({"outcome"})),
    "ws_disconnects": ("counter", frozenset({"reason"})),
    "ws_replayed_messages": ("counter", frozenset()),
    "bus_messages_received": ("counter", frozenset({"kind"})),
    "bus_deliveries": ("counter", frozenset()),
    "bus_reconnects": ("counter", frozenset()),
    "bus_selfcheck_repairs": ("counter", frozenset()),
    "bus_events": ("counter", frozenset({"event"})),
    "bus_connected": ("gauge", frozenset()),
    "bus_subscriptions": ("gauge", frozenset()),
    "redis_rtt_seconds": ("histogram", frozenset()),
    "gateway_draining": ("gauge", frozenset()),
    "http_emit": ("counter", frozenset({"outcome"})),
}


# Families whose samples exist before anything happened (the rest appear with their first label).
ALWAYS_SAMPLED = frozenset(f for f, (_, labels) in FAMILIES.items() if not labels) | {"ws_errors"}


def test_every_family_has_its_type_and_labels(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    # One of most things, so that labelled families have samples to check.
    connect(node_clients, "a", gw.ns_url, token(user))
    replica.pub.emit(EVENT, payload(0), room=f"user:{user}").result()
    node_clients.wait_events("a", EVENT, 1)
    assert node_clients.emit("a", "no:such:event") == {"ok": False, "error": "unknown_event"}
    assert emit_http(gw, json.dumps({"event": EVENT, "user": user, "data": payload(1)}).encode()) == 200
    node_clients.wait_events("a", EVENT, 2)
    node_clients.disconnect("a")
    wait_until(lambda: scrape(gw).by_label("ws_disconnects_total", "reason"), 5, "a disconnect counted")

    metrics = scrape(gw)
    ours = {name: f for name, f in metrics.families.items() if not name.startswith("process_")}
    assert set(ours) == set(FAMILIES), (
        f"exported but not known here: {sorted(set(ours) - set(FAMILIES))}; "
        f"known here but not exported: {sorted(set(FAMILIES) - set(ours))}")
    for name, (kind, labels) in FAMILIES.items():
        family = ours[name]
        assert family.type == kind, f"{name} is a {family.type}, expected a {kind}"
        if name in ALWAYS_SAMPLED or name in {"ws_messages_sent", "ws_handshakes", "ws_disconnects",
                                              "bus_messages_received", "http_emit"}:
            assert family.samples, f"{name} has no sample"
        for s in family.samples:
            if kind == "histogram":
                expected = {"le"} if s.name == f"{name}_bucket" else set()
                assert s.name in {f"{name}_bucket", f"{name}_count", f"{name}_sum"}, s.name
            else:
                expected = set(labels)
                suffix = "_total" if kind == "counter" else ""
                assert s.name == name + suffix, f"{s.name} in family {name}"
            assert set(s.labels) == expected, f"{s.name} has labels {s.labels}, expected {expected}"
    for name in ("ws_latency_seconds", "redis_rtt_seconds"):
        buckets = [(float(s.labels["le"]), s.value) for s in ours[name].samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets), f"{name}: buckets are cumulative and ordered"
        assert buckets[-1][0] == float("inf")
        assert buckets[-1][1] == metrics.value(f"{name}_count")
    # The contract's four, as it names them.
    for line in ("# TYPE ws_connections_active gauge", "# TYPE ws_messages_sent_total counter",
                 "# TYPE ws_errors_total counter", "# TYPE ws_latency_seconds histogram"):
        assert line in metrics.text
    assert metrics.value("bus_connected") == 1
    assert metrics.value("gateway_draining") == 0
    assert metrics.value("ws_latency_seconds_count") >= 1
    assert_no_user_ids(metrics, [user])


def test_the_dashboard_queries_every_family_the_replica_exports(replica: Replica) -> None:
    """deploy/grafana/dashboard.json shows every gateway metric a live replica exports (a
    counter by its _total sample, a histogram by its buckets)."""
    exprs = json.dumps(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    missing = []
    for name, family in scrape(replica.gw).families.items():
        if name.startswith("process_"):
            continue
        sample = {"counter": f"{name}_total", "histogram": f"{name}_bucket"}.get(family.type, name)
        if not re.search(rf"\b{re.escape(sample)}\b", exprs):
            missing.append(sample)
    assert not missing, f"the dashboard does not show {missing}"
