"""What the operations tests share: the settings of their replicas, reading /metrics, requests,
clients, and a producer. tests/e2e/test_nginx_gateway.py uses them too.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from publisher import Publisher
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients, Received

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


# -- drain -----------------------------------------------------------------------------------


DRAIN_SECONDS = 2.0
# What socket.io-client reports when a drain lets it go: its transport ended (never "io server
# disconnect", after which it would not reconnect). A WebSocket is closed; a long-polling
# session is ended, and the client learns it from its next poll.
LET_GO = {"websocket": {"transport close"}, "upgrade": {"transport close"},
          "polling": {"transport close", "transport error"}}
DRAIN_EXIT_SLACK = 5.0


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
                self.pub.emit(EVENT, payload(n, room), room=room).result()
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


@dataclass
class Replica:
    """The module's replica on the module's Redis, and a producer configured like it."""

    gw: GatewayProcess
    pub: Publisher
    redis: RedisServer
