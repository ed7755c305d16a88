"""Issue 6, operating the gateway, against real `gateway` processes, a real Redis and the real
socket.io-client (CONTRACT.md, "Operating it").

- Metrics: every family `/metrics` exports, parsed with prometheus_client's parser, has its type
  and its label names; the counters and gauges move when the thing they count happens
  (connections, event packets per recipient, latency observations, refused events, handshakes
  and their refusals, recoveries and replays, disconnects by reason, the bus's messages,
  deliveries and reconnections, `POST /api/emit` outcomes); no label value ever holds a user id.
- Drain: two replicas on one Redis; SIGTERM to one with `DRAIN_SECONDS=2`: its readiness goes
  503 at once and it refuses new handshakes with 503; its clients lose their transport (not a
  Socket.IO DISCONNECT), reconnect to the other replica (their manager's URI points there, as a
  load balancer would send them) and recover; every event published meanwhile arrives once, in
  order; the process exits 0 in time.
- Logs: `LOG_FORMAT=json` gives one JSON object per line, a line per connection and per
  disconnection with `sid` and `user_id`, and never a token or a piece of one.

Most metric tests share one replica on the module's Redis and compare counters before and
after, with user ids of their own; tests whose process-wide state matters (a Redis restart, a
drain, a log to read whole) start their own. Waits are bounded and generous; assertions are
about what happened, not how fast.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from publisher import Publisher
from tests.e2e.conftest import StartGateway
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.reports import failed
from tests.support.sio_client import NodeClients, Received

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboard.json"
SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
EVENT = "coins:earned"
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": ["polling", "websocket"]}
# Fast reconnection: the test does not wait out socket.io-client's default backoff.
FAST = {"reconnectionDelay": 50, "reconnectionDelayMax": 200}
WAIT = 10.0
RATE_LIMIT_DISCONNECT_AFTER = 5
MAX_CONNECTIONS_PER_USER = 2
NOT_EXEMPT = "127.0.0.9"  # a client address the per-IP handshake limit applies to

BASE_ENV = {
    "JWT_SECRET": SECRET,
    "PUBLISH_API_KEY": API_KEY,
    "LOG_FORMAT": "json",
    "DRAIN_SECONDS": "0",
    "MAX_CONNECTIONS_PER_USER": str(MAX_CONNECTIONS_PER_USER),
    "RATE_LIMIT_DISCONNECT_AFTER": str(RATE_LIMIT_DISCONNECT_AFTER),
    # The real client connects from 127.0.0.1 (exempt); raw requests from NOT_EXEMPT meet a
    # limit of 1 handshake/s with a burst of 5.
    "HANDSHAKE_RATE_PER_IP": "1",
    "HANDSHAKE_RATE_EXEMPT": "127.0.0.1/32",
    "HANDSHAKE_TIMEOUT": "2",
}

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


# -- helpers ---------------------------------------------------------------------------------


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def token(user: str, classrooms: tuple[str, ...] = (), **kw: Any) -> str:
    return make_token(SECRET, user, classrooms=classrooms, **kw)


def payload(n: int, room: str = "") -> dict[str, Any]:
    return {"amount": 1, "reason": "test", "newBalance": n, "n": n, "room": room}


def numbers(events: list[Received]) -> list[int]:
    return [e.payload["n"] for e in events]



@dataclass
class Scrape:
    """One GET /metrics, parsed with prometheus_client's own parser."""

    text: str
    families: dict[str, Any]

    def value(self, sample: str, **labels: str) -> float:
        """The sample `sample` (full name, e.g. ws_messages_sent_total) with exactly these labels;
        0 when it is absent (a labelled counter has no sample before its first increment)."""
        family = self.families.get(_family_of(sample))
        if family is None:
            return 0.0
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
        return 0.0

    def by_label(self, sample: str, label: str) -> dict[str, float]:
        family = self.families.get(_family_of(sample))
        if family is None:
            return {}
        return {s.labels[label]: float(s.value) for s in family.samples
                if s.name == sample and label in s.labels}

    def label_values(self) -> set[str]:
        return {v for f in self.families.values() for s in f.samples for v in s.labels.values()}


def _family_of(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def scrape(replica: GatewayProcess) -> Scrape:
    status, body = replica.http_get("/metrics")
    assert status == 200, body
    return Scrape(body, {f.name: f for f in text_string_to_metric_families(body)})


def delta(replica: GatewayProcess, before: Scrape, sample: str, **labels: str) -> float:
    return scrape(replica).value(sample, **labels) - before.value(sample, **labels)


def wait_delta(replica: GatewayProcess, before: Scrape, sample: str, expected: float,
               timeout: float = 5.0, **labels: str) -> None:
    """Wait until `sample{labels}` has moved by `expected` since `before` (counters are
    updated by the replica around the write the client observes: allow it a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        got = delta(replica, before, sample, **labels)
        if got == expected:
            return
        if time.monotonic() > deadline:
            now = scrape(replica)
            family = now.families.get(_family_of(sample))
            samples = [(s.name, s.labels, s.value) for s in family.samples] if family else []
            raise AssertionError(
                f"{sample}{labels or ''} moved by {got}, expected {expected}; now: {samples}")
        time.sleep(0.05)


def assert_no_user_ids(metrics: Scrape, user_ids: list[str]) -> None:
    """No label value holds, or contains, any of these user ids (nor does any other part of
    the exposition: a HELP text or a metric name)."""
    for user in user_ids:
        leaked = sorted(v for v in metrics.label_values() if user in v)
        assert not leaked, f"label values hold user id {user}: {leaked}"
        assert user not in metrics.text, f"/metrics mentions user id {user}"


def request(method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, bytes]:
    """(status, body) of one request, from the loopback address `source` if given."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5,
                                      source_address=(source, 0) if source else None)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def emit_http(replica: GatewayProcess, body: bytes, key: str | None = API_KEY) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    status, _ = request("POST", replica.url + "/api/emit", body, headers)
    return status


def engineio_handshake(replica: GatewayProcess, source: str | None = None) -> int:
    """A new Engine.IO session over polling (what every client's first request is): the status."""
    status, _ = request("GET", replica.url + "/socket.io/?EIO=4&transport=polling", source=source)
    return status


def connect(clients: NodeClients, name: str, url: str, tok: str | None,
            transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    clients.connect(name, url, token=tok, transports=TRANSPORTS[transport], **{**FAST, **opts})
    record = clients.wait_connected(name, timeout=WAIT)
    assert record["type"] == "connect", record
    return record


def refused(clients: NodeClients, name: str, url: str, tok: Any) -> dict[str, Any]:
    clients.connect(name, url, token=tok, transports=["websocket"], **FAST)
    record = clients.wait_connected(name, timeout=WAIT)
    assert record["type"] == "connect_error", record
    return record


def on_websocket(clients: NodeClients, name: str) -> bool:
    return bool(clients.state(name)["transport"] == "websocket")


def unready(replica: GatewayProcess) -> tuple[int, str] | None:
    """(503, body) when the replica's readiness says no, else None."""
    status, body = replica.http_get("/readyz")
    return (status, body) if status == 503 else None


def json_lines(replica: GatewayProcess) -> list[dict[str, Any]]:
    """The replica's JSON log lines (whether every line is JSON is the log tests' business)."""
    return [json.loads(line) for line in replica.log_text().splitlines() if line.startswith("{")]


class Producer:
    """Publishes numbered events from a thread, cycling through `rooms`; remembers each number's
    room, so that what a client should have received can be computed afterwards."""

    def __init__(self, pub: Publisher, rooms: list[str], pause: float = 0.005) -> None:
        self.pub = pub
        self.rooms = rooms
        self.pause = pause
        self.published: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            room = self.rooms[n % len(self.rooms)]
            try:
                self.pub.emit(EVENT, payload(n, room), room=room)
            except Exception as exc:  # noqa: BLE001 - reported by stop()
                self.errors.append(exc)
                return
            self.published.append((n, room))
            n += 1
            time.sleep(self.pause)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the producer did not stop"
        assert not self.errors, f"the producer failed: {self.errors!r}"
        return self.published

    def for_rooms(self, rooms: set[str]) -> list[int]:
        return [n for n, room in self.published if room in rooms]


def explain(clients: NodeClients, name: str, expected: list[int]) -> str:
    """Where the socket's numbers first differ from `expected`, with its records around there
    (connects and disconnects included)."""
    got = numbers(clients.events(name, EVENT))
    first = next((i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e),
                 min(len(got), len(expected)))
    records = clients.log(name)
    events = [i for i, r in enumerate(records) if r["type"] == "event"]
    at = events[first] if first < len(events) else len(records) - 1
    around = []
    for r in records[max(0, at - 8):at + 8]:
        brief: dict[str, Any] = {k: r[k] for k in ("type", "seq", "t", "reason", "recovered", "sid", "offset")
                                 if k in r}
        if r["type"] == "event":
            brief["n"] = r["args"][0].get("n") if r["args"] and isinstance(r["args"][0], dict) else None
        around.append(json.dumps(brief))
    dups = sorted({n for n in got if got.count(n) > 1})
    return (f"{name}: {len(got)} events, expected {len(expected)}; first difference at index "
            f"{first} (got {got[first:first + 5]}, expected {expected[first:first + 5]}); "
            f"missing {sorted(set(expected) - set(got))[:20]}, duplicated {dups[:20]}\n"
            + "\n".join(around))


def settle(clients: NodeClients, name: str, count: int, timeout: float = WAIT) -> list[int]:
    """The numbers the socket received, once `count` have arrived and no more come in 0.3 s."""
    clients.wait_events(name, EVENT, count, timeout=timeout)
    clients.assert_no_event(name, EVENT, within=0.3, allowed=count)
    return numbers(clients.events(name, EVENT))


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Replica:
    """The module's replica on the module's Redis, and a producer configured like it."""

    gw: GatewayProcess
    pub: Publisher
    redis: RedisServer


@pytest.fixture(scope="module")
def replica(shared_redis: RedisServer) -> Iterator[Replica]:
    prefix = uid("op")
    env = {**BASE_ENV, "REDIS_URL": shared_redis.url, "KEY_PREFIX": prefix,
           "CHANNEL_PREFIX": f"{prefix}.io"}
    gw = GatewayProcess(env, name="ops")
    gw.start()
    pub = Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=f"{prefix}.io")
    try:
        gw.wait_ready(20)
        yield Replica(gw, pub, shared_redis)
    finally:
        pub.close()
        gw.stop()


@pytest.fixture(autouse=True)
def _replica_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, print what the module's replica logged during the test."""
    if "replica" not in request.fixturenames:
        yield
        return
    rep: Replica = request.getfixturevalue("replica")
    mark = len(rep.gw.log_text())
    yield
    if failed(request):
        print(f"-- {rep.gw!r} log during the test:\n{rep.gw.log_text()[mark:][-8000:]}")


@pytest.fixture
def nowhere() -> str:
    """A URL where nothing listens: a client pointed there stays away and keeps retrying."""
    return f"http://127.0.0.1:{free_port()}"


# -- metrics: what exists --------------------------------------------------------------------


def test_every_family_has_its_type_and_labels(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    # One of most things, so that labelled families have samples to check.
    connect(node_clients, "a", gw.ns_url, token(user))
    replica.pub.emit(EVENT, payload(0), room=f"user:{user}")
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


# -- metrics: what moves ---------------------------------------------------------------------


def test_connection_gauge_and_subscriptions_follow_sockets(node_clients: NodeClients,
                                                          replica: Replica, nowhere: str) -> None:
    gw = replica.gw
    alice, bob, room = uid(), uid(), uid("c")
    before = scrape(gw)
    base = before.value("ws_connections_active")
    subs = before.value("bus_subscriptions")
    connect(node_clients, "a1", gw.ns_url, token(alice, (room,)))
    connect(node_clients, "a2", gw.ns_url, token(alice, (room,)), "polling")
    connect(node_clients, "b", gw.ns_url, token(bob, (room,)))
    now = scrape(gw)
    assert now.value("ws_connections_active") == base + 3
    # user:alice, user:bob and the classroom: one channel each, however many sockets.
    assert now.value("bus_subscriptions") == subs + 3

    node_clients.disconnect("b")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base + 2, 5,
               "the gauge follows a disconnect")
    assert scrape(gw).value("bus_subscriptions") == subs + 2

    # A lost transport: down while away, up again once recovered.
    node_clients.set_uri("a1", nowhere)
    node_clients.close_transport("a1")
    node_clients.wait_disconnected("a1")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base + 1, 5,
               "the gauge follows a lost transport")
    node_clients.set_uri("a1", gw.url)
    back = node_clients.wait_connected("a1", timeout=WAIT)
    assert back["recovered"] is True, back
    assert scrape(gw).value("ws_connections_active") == base + 2

    for name in ("a1", "a2"):
        node_clients.disconnect(name)
    wait_until(lambda: scrape(gw).value("ws_connections_active") == base, 5, "back to the start")
    assert scrape(gw).value("bus_subscriptions") == subs
    assert_no_user_ids(scrape(gw), [alice, bob])


def test_messages_latency_and_bus_counters_count_each_recipient(node_clients: NodeClients,
                                                                replica: Replica) -> None:
    gw, pub = replica.gw, replica.pub
    alice, bob, room = uid(), uid(), uid("c")
    connect(node_clients, "a1", gw.ns_url, token(alice, (room,)))
    connect(node_clients, "a2", gw.ns_url, token(alice, (room,)), "polling")
    connect(node_clients, "b", gw.ns_url, token(bob, (room,)))
    before = scrape(gw)

    pub.emit(EVENT, payload(0), room=f"user:{alice}")                      # 2 recipients
    pub.emit("achievement:unlocked", {"achievementId": "a", "name": "n", "description": "d",
                                      "icon": "i", "xpReward": 5}, room=f"classroom:{room}")  # 3
    pub.emit("custom:thing", {"x": 1}, room=f"user:{bob}")                 # 1, label "other"
    pub.emit(EVENT, payload(1), room=f"classroom:{uid('c')}")              # nobody here
    for name, count in (("a1", 2), ("a2", 2), ("b", 2)):
        node_clients.wait_events(name, None, count)

    sent = "ws_messages_sent_total"
    wait_delta(gw, before, sent, 2, event=EVENT)
    wait_delta(gw, before, sent, 3, event="achievement:unlocked")
    wait_delta(gw, before, sent, 1, event="other")
    wait_delta(gw, before, "ws_latency_seconds_count", 6)
    wait_delta(gw, before, "bus_deliveries_total", 6)
    # One bus message per publish to a room this replica listens to; none for the empty room.
    wait_delta(gw, before, "bus_messages_received_total", 3, kind="event")
    after = scrape(gw)
    assert after.value("ws_latency_seconds_sum") > before.value("ws_latency_seconds_sum")
    assert "custom:thing" not in after.label_values(), "event labels come from a fixed set"

    # A control message (a producer's join) is received once, whatever it does.
    received = sum(before.by_label("bus_messages_received_total", "kind").values())
    pub.join(bob, f"classroom:{uid('c')}")
    wait_until(lambda: sum(scrape(gw).by_label("bus_messages_received_total", "kind").values())
               == received + 4, 5, "the join message counted")
    assert_no_user_ids(scrape(gw), [alice, bob])


def test_refused_client_events_are_counted_by_kind(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    before = scrape(gw)
    assert node_clients.emit("a", "admin:delete_everything", {"x": 1}) == {"ok": False, "error": "unknown_event"}
    node_clients.emit("a", "hello", ack=False)
    node_clients.emit("a", "join", "classroom:1", ack=False)
    wait_delta(gw, before, "ws_errors_total", 3, kind="unknown_event")
    reply = node_clients.emit("a", "subscribe:notifications", {"a": 1}, {"b": 2})
    assert reply == {"ok": False, "error": "invalid_payload"}
    wait_delta(gw, before, "ws_errors_total", 1, kind="invalid_payload")
    # The connection is still fine.
    assert node_clients.emit("a", "subscribe:notifications")["ok"] is True
    assert_no_user_ids(scrape(gw), [user])


def test_a_flooding_client_is_rate_limited_then_disconnected(node_clients: NodeClients,
                                                            replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    before = scrape(gw)
    for i in range(80):  # far beyond the bucket's burst (40 by default)
        node_clients.emit("a", "subscribe:notifications", {"i": i}, ack=False)
    gone = node_clients.wait_disconnected("a", timeout=WAIT)
    assert gone["reason"] == "io server disconnect", gone
    wait_delta(gw, before, "ws_errors_total", RATE_LIMIT_DISCONNECT_AFTER, kind="rate_limited")
    wait_delta(gw, before, "ws_disconnects_total", 1, reason="rate_limited")
    assert_no_user_ids(scrape(gw), [user])


def test_handshake_outcomes_are_counted(node_clients: NodeClients, replica: Replica) -> None:
    gw = replica.gw
    user, other = uid(), uid()
    before = scrape(gw)
    hs = "ws_handshakes_total"

    connect(node_clients, "ok1", gw.ns_url, token(user))
    connect(node_clients, "ok2", gw.ns_url, token(user), "polling")
    wait_delta(gw, before, hs, 2, outcome="ok")

    assert refused(node_clients, "missing", gw.ns_url, None)["data"] == {"code": "token_missing"}
    bad = make_token("another-secret-" + "x" * 32, other)
    assert refused(node_clients, "invalid", gw.ns_url, bad)["data"] == {"code": "token_invalid"}
    expired = token(other, exp_in=-60)
    assert refused(node_clients, "expired", gw.ns_url, expired)["data"] == {"code": "token_expired"}
    third = refused(node_clients, "third", gw.ns_url, token(user))  # MAX_CONNECTIONS_PER_USER = 2
    assert third["message"] == "too_many_connections", third
    for outcome in ("token_missing", "token_invalid", "token_expired", "too_many_connections"):
        wait_delta(gw, before, hs, 1, outcome=outcome)

    # The per-IP handshake rate, from an address it applies to (burst 5, 1/s).
    statuses = [engineio_handshake(gw, NOT_EXEMPT) for _ in range(10)]
    assert set(statuses) == {200, 429}, statuses
    wait_delta(gw, before, hs, statuses.count(429), outcome="ip_rate_limited")
    # The sessions it let through never sent a Socket.IO CONNECT: closed after HANDSHAKE_TIMEOUT.
    wait_delta(gw, before, "ws_errors_total", statuses.count(200), timeout=10, kind="handshake_timeout")

    wait_delta(gw, before, hs, 2, outcome="ok")  # nothing above counted as a success
    assert_no_user_ids(scrape(gw), [user, other])


def test_recoveries_and_replays_are_counted(node_clients: NodeClients, replica: Replica,
                                            nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    user, room = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{room}"]
    first = connect(node_clients, "a", gw.ns_url, token(user, (room,)))
    pub.emit(EVENT, payload(0), room=rooms[0])
    node_clients.wait_events("a", EVENT, 1)
    before = scrape(gw)

    node_clients.set_uri("a", nowhere)
    node_clients.close_transport("a")
    node_clients.wait_disconnected("a")
    for n in range(1, 5):
        pub.emit(EVENT, payload(n, rooms[n % 2]), room=rooms[n % 2])
    node_clients.set_uri("a", gw.url)
    back = node_clients.wait_connected("a", timeout=WAIT)
    assert back["recovered"] is True, back
    assert back["sid"] == first["sid"], back
    assert settle(node_clients, "a", 5) == [0, 1, 2, 3, 4]
    wait_delta(gw, before, "ws_recoveries_total", 1, outcome="recovered")
    wait_delta(gw, before, "ws_handshakes_total", 1, outcome="recovered")
    wait_delta(gw, before, "ws_replayed_messages_total", 4)
    wait_delta(gw, before, "ws_disconnects_total", 1, reason="transport close")

    # A pid the gateway never gave: a fresh session, and the failed attempt counted by outcome.
    other = uid()
    fresh = scrape(gw)
    node_clients.connect("b", gw.ns_url, token=token(other), auth={"pid": "A" * 22, "offset": "x"},
                         transports=["websocket"], **FAST)
    record = node_clients.wait_connected("b")
    assert record["type"] == "connect", record
    assert record["recovered"] is False, record
    after = scrape(gw)
    failed = {k: v - fresh.by_label("ws_recoveries_total", "outcome").get(k, 0)
              for k, v in after.by_label("ws_recoveries_total", "outcome").items()}
    assert failed.get("recovered", 0) == 0, failed
    assert sum(failed.values()) == 1, failed
    assert after.value("ws_handshakes_total", outcome="ok") - fresh.value("ws_handshakes_total", outcome="ok") == 1
    assert_no_user_ids(after, [user, other])


def test_replayed_events_are_counted_as_sent(node_clients: NodeClients, replica: Replica,
                                             nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    pub.emit(EVENT, payload(0), room=f"user:{user}")
    node_clients.wait_events("a", EVENT, 1)
    node_clients.set_uri("a", nowhere)
    node_clients.close_transport("a")
    node_clients.wait_disconnected("a")
    before = scrape(gw)
    for n in range(1, 4):
        pub.emit(EVENT, payload(n), room=f"user:{user}")
    node_clients.set_uri("a", gw.url)
    assert node_clients.wait_connected("a", timeout=WAIT)["recovered"] is True
    assert settle(node_clients, "a", 4) == [0, 1, 2, 3]
    # Three event packets were written to the client's socket.
    wait_delta(gw, before, "ws_messages_sent_total", 3, event=EVENT)


def test_disconnects_are_counted_by_reason(node_clients: NodeClients, replica: Replica,
                                           nowhere: str) -> None:
    gw, pub = replica.gw, replica.pub
    users = [uid() for _ in range(4)]
    before = scrape(gw)
    connect(node_clients, "leaves", gw.ns_url, token(users[0]), "polling")
    connect(node_clients, "drops", gw.ns_url, token(users[1]))
    connect(node_clients, "kicked", gw.ns_url, token(users[2]))
    connect(node_clients, "expires", gw.ns_url, token(users[3], exp_in=2))

    node_clients.disconnect("leaves")
    node_clients.set_uri("drops", nowhere)
    node_clients.close_transport("drops")
    pub.disconnect_user(users[2])
    assert node_clients.wait_disconnected("kicked", timeout=WAIT)["reason"] == "io server disconnect"
    assert node_clients.wait_disconnected("expires", timeout=WAIT)["reason"] == "io server disconnect"
    node_clients.wait_disconnected("drops")
    reason = "ws_disconnects_total"
    wait_delta(gw, before, reason, 1, reason="client disconnect")
    wait_delta(gw, before, reason, 1, reason="transport close")
    wait_delta(gw, before, reason, 1, reason="kicked")
    wait_delta(gw, before, reason, 1, reason="token_expired")
    after = scrape(gw)
    moved = {k: v - before.by_label(reason, "reason").get(k, 0)
             for k, v in after.by_label(reason, "reason").items()}
    assert sum(moved.values()) == 4, moved
    assert_no_user_ids(after, users)


def test_http_emit_outcomes_are_counted(replica: Replica) -> None:
    gw = replica.gw
    user = uid()
    before = scrape(gw)
    good = json.dumps({"event": EVENT, "user": user, "data": payload(0)}).encode()
    assert emit_http(gw, good) == 200
    assert emit_http(gw, good) == 200
    assert emit_http(gw, good, key="wrong-key") == 401
    assert emit_http(gw, good, key=None) == 401
    assert emit_http(gw, b"{not json") == 400
    assert emit_http(gw, json.dumps({"event": EVENT, "data": {}}).encode()) == 400
    assert emit_http(gw, json.dumps({"event": EVENT, "user": user, "data": "x" * 70_000}).encode()) == 413
    out = "http_emit_total"
    wait_delta(gw, before, out, 2, outcome="ok")
    wait_delta(gw, before, out, 2, outcome="unauthorized")
    wait_delta(gw, before, out, 1, outcome="invalid_json")
    wait_delta(gw, before, out, 1, outcome="invalid_request")
    wait_delta(gw, before, out, 1, outcome="payload_too_large")
    assert_no_user_ids(scrape(gw), [user])


def test_no_label_value_ever_holds_a_user_id(node_clients: NodeClients, replica: Replica,
                                             nowhere: str) -> None:
    """Everything that takes a user id through the gateway, with ids that would be easy to
    mistake for label values (numbers, the names of rooms), then every sample's labels."""
    gw, pub = replica.gw, replica.pub
    users = [str(90_000_000 + secrets.randbelow(9_000_000)), uid("teacher"), uid("admin")]
    connect(node_clients, "s", gw.ns_url, token(users[0], ("4711",)))
    connect(node_clients, "t", gw.ns_url, token(users[1], role="teacher"), "polling")
    connect(node_clients, "a", gw.ns_url, token(users[2], role="admin"))
    for user in users:
        assert emit_http(gw, json.dumps({"event": EVENT, "user": user, "data": payload(0)}).encode()) == 200
        pub.emit(EVENT, payload(1), room=f"user:{user}")
    for name in ("s", "t", "a"):
        node_clients.wait_events(name, None, 2)
    node_clients.emit("s", f"user:{users[0]}")  # an unknown event named after the user
    pub.join(users[0], f"classroom:{users[0]}")  # a control message naming the user
    node_clients.set_uri("t", nowhere)
    node_clients.close_transport("t")
    node_clients.wait_disconnected("t")
    node_clients.set_uri("t", gw.url)
    assert node_clients.wait_connected("t", timeout=WAIT)["recovered"] is True
    pub.disconnect_user(users[2])
    node_clients.wait_disconnected("a", timeout=WAIT)
    refused(node_clients, "late", gw.ns_url, token(users[0], exp_in=-5))
    assert_no_user_ids(scrape(gw), users)


# -- the bus going away and coming back --------------------------------------------------------


def test_bus_metrics_and_readiness_across_a_redis_restart(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway,
) -> None:
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url})
    user = uid()
    connect(node_clients, "a", gw.ns_url, token(user))
    with Publisher(redis_server.url) as pub:
        pub.emit(EVENT, payload(0), room=f"user:{user}")
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

    redis_server.start()  # same port, empty: a new epoch
    wait_until(lambda: scrape(gw).value("bus_connected") == 1, 20, "bus_connected back to 1")
    wait_until(lambda: gw.http_get("/readyz")[0] == 200, WAIT, "ready again")
    # Counted once the new connection has resubscribed and caught up.
    wait_until(lambda: delta(gw, before, "bus_reconnects_total") >= 1, WAIT, "bus_reconnects_total rises")
    with Publisher(redis_server.url) as pub:
        pub.emit(EVENT, payload(2), room=f"user:{user}")
        events = node_clients.wait_events("a", EVENT, 2, timeout=WAIT)
    assert numbers(events) == [0, 2]
    wait_delta(gw, before, "bus_events_total", 1, event="epoch_change")
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
            pub.emit(EVENT, payload(0), room=f"user:{user}")
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
                        pub.emit(EVENT, payload(n), room=f"user:{user}")
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


# -- drain -----------------------------------------------------------------------------------


DRAIN_SECONDS = 2.0
# What socket.io-client reports when a drain lets it go: its transport ended (never "io server
# disconnect", after which it would not reconnect). A WebSocket is closed; a long-polling
# session is ended, and the client learns it from its next poll.
LET_GO = {"websocket": {"transport close"}, "upgrade": {"transport close"},
          "polling": {"transport close", "transport error"}}
DRAIN_EXIT_SLACK = 5.0


def test_sigterm_drains_clients_to_the_other_replica_without_losing_an_event(
    node_clients: NodeClients, shared_redis: RedisServer, start_gateway: StartGateway,
) -> None:
    prefix = uid("dr")
    settings = {"KEY_PREFIX": prefix, "CHANNEL_PREFIX": f"{prefix}.io"}
    env = {**BASE_ENV, **settings, "REDIS_URL": shared_redis.url,
           "DRAIN_SECONDS": str(DRAIN_SECONDS), "HANDSHAKE_RATE_PER_IP": "1000"}
    leaving = start_gateway(env, ready=False)
    staying = start_gateway(env, ready=False)
    leaving.wait_ready(20)
    staying.wait_ready(20)

    classroom = f"classroom:{uid('c')}"
    names = [f"c{i}" for i in range(9)]
    users = {name: uid() for name in names}
    first: dict[str, dict[str, Any]] = {}
    # WebSocket, long-polling, and socket.io-client's default (long-polling, then the upgrade).
    transports = {}
    for i, name in enumerate(names):
        transport = transports[name] = ("websocket", "polling", "upgrade")[i % 3]
        first[name] = connect(node_clients, name, leaving.ns_url,
                              token(users[name], (classroom.split(":")[1],)), transport)
        if transport == "upgrade":
            wait_until(partial(on_websocket, node_clients, name), WAIT, f"{name} upgrades to WebSocket")
        node_clients.set_uri(name, staying.url)  # where a load balancer sends them next
    assert scrape(leaving).value("ws_connections_active") == len(names)

    rooms = [classroom, *(f"user:{users[n]}" for n in names)]
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=f"{prefix}.io") as pub, \
            Producer(pub, rooms) as producer:
        for name in names:
            node_clients.wait_events(name, EVENT, 2, timeout=WAIT)
        sigterm_at = time.monotonic()
        leaving.sigterm()

        # Readiness first, and no new connections.
        _, body = wait_until(lambda: unready(leaving), 2.0,
                                  "/readyz answers 503 once SIGTERM arrives", every=0.01)
        assert json.loads(body)["reason"] == "draining"
        assert engineio_handshake(leaving) == 503
        during = scrape(leaving)
        assert during.value("gateway_draining") == 1
        assert during.value("ws_handshakes_total", outcome="draining") >= 1

        # Every client loses its transport (no DISCONNECT packet), comes back on the other
        # replica and recovers its session.
        for name in names:
            gone = node_clients.wait_disconnected(name, timeout=DRAIN_SECONDS + DRAIN_EXIT_SLACK)
            assert gone["reason"] in LET_GO[transports[name]], (name, gone)
            assert gone["retrying"] is True, (name, gone)
        for name in names:
            back = node_clients.wait_connected(name, timeout=WAIT)
            assert back["type"] == "connect", (name, back)
            assert back["recovered"] is True, (name, back, scrape(staying).by_label("ws_recoveries_total", "outcome"))
            assert back["sid"] == first[name]["sid"], (name, back)

        code = leaving.wait_exit(max(0.1, DRAIN_SECONDS + DRAIN_EXIT_SLACK - (time.monotonic() - sigterm_at)))
        assert code == 0, leaving.log_tail()
        # Events keep flowing after the move.
        counts = {name: len(node_clients.events(name, EVENT)) for name in names}
        for name in names:
            node_clients.wait_events(name, EVENT, counts[name] + 3, timeout=WAIT)
        producer.stop()

    expected = {name: producer.for_rooms({classroom, f"user:{users[name]}"}) for name in names}
    for name in names:
        node_clients.wait_events(name, EVENT, len(expected[name]), timeout=WAIT)
    time.sleep(0.3)  # anything extra (a duplicate) is due by now
    for name in names:
        got = numbers(node_clients.events(name, EVENT))
        assert got == expected[name], explain(node_clients, name, expected[name])

    # Let go in batches over DRAIN_SECONDS, not all at once (a stampede on the other replicas).
    drops = sorted(r["t"] for name in names for r in node_clients.log(name)
                   if r["type"] == "disconnect")
    assert (drops[-1] - drops[0]) / 1000 >= DRAIN_SECONDS / 4, f"all let go within {drops[-1] - drops[0]} ms"

    moved = scrape(staying)
    assert moved.value("ws_connections_active") == len(names)
    assert moved.value("ws_recoveries_total", outcome="recovered") == len(names)
    drained = [line for line in json_lines(leaving) if line.get("msg") == "draining"]
    assert drained, "no `draining` line in the log"
    assert drained[0]["connections"] == len(names), drained
    assert_no_user_ids(moved, list(users.values()))


class Relay:
    """A TCP relay on loopback in front of one replica whose client-to-server direction can be
    held: `hold()` keeps the client's next requests (a long-polling client's next GET) from
    reaching the replica until `release()`. Threads, stopped by `close()`."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="relay", daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for src, dst, gated in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(src, dst, gated), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while gated and not self._flowing.wait(0.1):
                    if self._closed.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(2)


def test_a_drained_polling_client_gets_no_event_twice(
    node_clients: NodeClients, shared_redis: RedisServer, start_gateway: StartGateway,
) -> None:
    """The drain lets a long-polling socket go while events wait in its queue for the next
    poll: made certain here by holding that poll (a relay) while they are queued. The client
    must handle them once: from this replica, or replayed by the next one, never both (a
    CLOSE packet behind them in one poll made socket.io-client buffer them as missed)."""
    prefix = uid("dp")
    settings = {"KEY_PREFIX": prefix, "CHANNEL_PREFIX": f"{prefix}.io"}
    env = {**BASE_ENV, **settings, "REDIS_URL": shared_redis.url, "DRAIN_SECONDS": str(DRAIN_SECONDS)}
    leaving = start_gateway(env, ready=False)
    staying = start_gateway(env, ready=False)
    leaving.wait_ready(20)
    staying.wait_ready(20)
    relay = Relay(leaving.port)
    user = uid()
    room = f"user:{user}"
    try:
        with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=f"{prefix}.io") as pub:
            first = connect(node_clients, "p", relay.url + "/notifications", token(user), "polling")
            node_clients.set_uri("p", staying.url)
            pub.emit(EVENT, payload(0), room=room)
            node_clients.wait_events("p", EVENT, 1)
            relay.hold()  # the client's next poll waits at the relay
            pub.emit(EVENT, payload(1), room=room)
            pub.emit(EVENT, payload(2), room=room)
            time.sleep(0.3)  # queued on the leaving replica, with no poll to take them
            leaving.sigterm()
            wait_until(lambda: unready(leaving), 2.0, "/readyz answers 503", every=0.01)
            time.sleep(0.3)  # the drain has let the only client go: its CLOSE is queued
            relay.release()
            back = node_clients.wait_connected("p", timeout=WAIT)
            assert back["recovered"] is True, back
            assert back["sid"] == first["sid"], back
            pub.emit(EVENT, payload(3), room=room)
            node_clients.wait_events("p", EVENT, 4, timeout=WAIT)
            time.sleep(0.3)
            got = numbers(node_clients.events("p", EVENT))
            assert got == [0, 1, 2, 3], explain(node_clients, "p", [0, 1, 2, 3])
    finally:
        relay.close()


def test_every_client_let_go_by_a_drain_is_logged_as_disconnected(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway, nowhere: str,
) -> None:
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url, "DRAIN_SECONDS": str(DRAIN_SECONDS)})
    sids = {}
    for transport in ("websocket", "polling"):
        sids[transport] = connect(node_clients, transport, gw.ns_url, token(uid()), transport)["sid"]
        node_clients.set_uri(transport, nowhere)  # they stay away: only the drain is looked at
    gw.sigterm()
    for transport in sids:
        gone = node_clients.wait_disconnected(transport, timeout=WAIT)
        assert gone["reason"] in LET_GO[transport], gone
        assert gone["retrying"] is True, gone
    assert gw.wait_exit(DRAIN_SECONDS + DRAIN_EXIT_SLACK) == 0
    gw.stop()
    ended = {line.get("sid"): line.get("reason") for line in json_lines(gw) if line["msg"] == "disconnected"}
    missing = {t: sid for t, sid in sids.items() if sid not in ended}
    assert not missing, f"no `disconnected` line for {missing}"


# -- logs ------------------------------------------------------------------------------------


def test_json_logs_have_a_line_per_connection_and_never_a_token(
    node_clients: NodeClients, redis_server: RedisServer, start_gateway: StartGateway, nowhere: str,
) -> None:
    gw = start_gateway({**BASE_ENV, "REDIS_URL": redis_server.url, "LOG_FORMAT": "json"})
    users = {"ws": uid(), "poll": uid(), "hdr": uid(), "kick": uid()}
    tokens = {name: token(user, ("7",)) for name, user in users.items()}
    sids = {}
    sids["ws"] = connect(node_clients, "ws", gw.ns_url, tokens["ws"])["sid"]
    sids["poll"] = connect(node_clients, "poll", gw.ns_url, "Bearer " + tokens["poll"], "polling")["sid"]
    sids["hdr"] = connect(node_clients, "hdr", gw.ns_url, None,
                          extraHeaders={"Authorization": f"Bearer {tokens['hdr']}"})["sid"]
    sids["kick"] = connect(node_clients, "kick", gw.ns_url, tokens["kick"])["sid"]
    # Refusals: their tokens must not be logged either.
    bad_tokens = [
        make_token("not-the-secret-" + "y" * 32, uid()),
        token(uid(), exp_in=-30),
        token(uid())[:-6] + "AAAAAA",
        "eyJhbGciOiJub25lIn0." + token(uid()).split(".")[1] + ".",
        "definitely-not-a-jwt-" + secrets.token_hex(8),
    ]
    for i, bad in enumerate(bad_tokens):
        refused(node_clients, f"bad{i}", gw.ns_url, bad)

    # One recovery (a connection), a kick, a disconnect, a lost transport.
    node_clients.set_uri("ws", nowhere)
    node_clients.close_transport("ws")
    node_clients.wait_disconnected("ws")
    node_clients.set_uri("ws", gw.url)
    assert node_clients.wait_connected("ws", timeout=WAIT)["recovered"] is True
    with Publisher(redis_server.url) as pub:
        pub.disconnect_user(users["kick"])
    node_clients.wait_disconnected("kick", timeout=WAIT)
    node_clients.disconnect("poll")
    node_clients.disconnect("hdr")
    node_clients.disconnect("ws")
    wait_until(lambda: scrape(gw).value("ws_connections_active") == 0, 5, "everyone gone")
    gw.sigterm()
    assert gw.wait_exit(DRAIN_SECONDS + DRAIN_EXIT_SLACK) == 0
    gw.stop()

    text = gw.log_text()
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {raw[:300]!r}")
        assert isinstance(line, dict), raw
        assert {"ts", "level", "logger", "msg"} <= set(line), raw
        lines.append(line)

    expected_connections = {"ws": 2, "poll": 1, "hdr": 1, "kick": 1}
    expected_reasons = {"ws": ["transport close", "client disconnect"], "poll": ["client disconnect"],
                        "hdr": ["client disconnect"], "kick": ["kicked"]}
    for name, sid in sids.items():
        mine = [line for line in lines if line.get("sid") == sid]
        connected = [line for line in mine if line["msg"] == "connected"]
        disconnected = [line for line in mine if line["msg"] == "disconnected"]
        assert len(connected) == expected_connections[name], (name, mine)
        assert [d.get("reason") for d in disconnected] == expected_reasons[name], (name, mine)
        for line in connected + disconnected:
            assert line.get("user_id") == users[name], line
    # A refusal is logged with its code, and no user id was established.
    refusals = [line for line in lines if line["msg"] == "handshake refused"]
    assert len(refusals) == len(bad_tokens), refusals
    assert {r.get("code") for r in refusals} == {"token_invalid", "token_expired"}

    for tok in [*tokens.values(), *bad_tokens]:
        pieces = [tok, *(p for p in tok.split(".") if len(p) >= 8)]
        for piece in pieces:
            assert piece not in text, f"the log holds a token or a part of one: {piece[:24]}..."
    assert SECRET not in text
    assert API_KEY not in text


def test_log_lines_stay_json_whatever_a_client_sends(start_gateway: StartGateway) -> None:
    gw = start_gateway({**BASE_ENV, "LOG_FORMAT": "json"})
    forged = {"ts": "2026-01-01T00:00:00.000Z", "level": "info", "logger": "gateway.socket",
              "msg": "connected", "sid": "forged", "user_id": "admin"}
    sid = "\n" + json.dumps(forged) + "\n"
    status, _ = request("GET", gw.url + "/socket.io/?EIO=4&transport=polling&sid=" + quote(sid))
    assert status == 400
    status, _ = request("GET", gw.url + "/socket.io/?EIO=4&transport=polling&sid=unknown")
    assert status == 400
    gw.sigterm()
    assert gw.wait_exit(DRAIN_SECONDS + DRAIN_EXIT_SLACK) == 0
    gw.stop()
    text = gw.log_text()
    for raw in text.splitlines():
        if raw.strip():
            try:
                line = json.loads(raw)
            except ValueError:
                pytest.fail(f"a log line is not JSON: {raw[:200]!r}")
            assert line.get("sid") != "forged", f"a client forged a log line: {raw}"
