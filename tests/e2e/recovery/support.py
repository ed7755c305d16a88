"""What the recovery tests share: the deployments they run against, and the steps a test
takes with its client (connect, go away, come back, settle).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from publisher import Publisher
from publisher.commands import Message
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients, Received

EVENT = "coins:earned"
SECRET = secrets.token_hex(32)
API_KEY = secrets.token_hex(16)
# Fast reconnection, so a test does not wait out the client's default backoff; the
# reconnection logic itself is socket.io-client's own.
FAST = {"reconnectionDelay": 50, "reconnectionDelayMax": 200}
# "upgrade" is socket.io-client's default: long-polling first, then WebSocket.
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": ["polling", "websocket"]}
BACK_TIMEOUT = 10.0
COMMON_ENV = {
    "JWT_SECRET": SECRET,
    "PUBLISH_API_KEY": API_KEY,
    "DRAIN_SECONDS": "0",
    # every client of these tests comes from 127.0.0.1 and reconnects often
    "HANDSHAKE_RATE_PER_IP": "10000",
    "LOG_FORMAT": "text",
}


# -- deployments ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    """Replicas on one bus, and a way to emit to them as a producer does."""

    kind: str  # "redis" or "memory"
    replicas: list[GatewayProcess]
    settings: dict[str, str]
    redis: RedisServer | None = None
    key_prefix: str = "ngw"
    publisher: Publisher | None = None

    @property
    def history_max_len(self) -> int:
        return int(self.settings.get("HISTORY_MAX_LEN", "1000"))

    @property
    def window(self) -> float:
        return float(self.settings.get("RECOVERY_WINDOW", "120"))

    def replica(self, i: int) -> GatewayProcess:
        return self.replicas[i % len(self.replicas)]

    def emit(self, room: str | None, payload: dict[str, Any]) -> str:
        """Emit EVENT to `room` (None: everyone); the offset the bus gave it."""
        if self.publisher is not None:
            if room is None:
                return self.publisher.emit(EVENT, payload, broadcast=True).result()
            return self.publisher.emit(EVENT, payload, room=room).result()
        target = {"room": room} if room is not None else {"all": True}
        body = json.dumps({"event": EVENT, "data": payload, **target}).encode()
        request = urllib.request.Request(
            self.replicas[0].url + "/api/emit", data=body, method="POST",
            headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            answer = json.loads(resp.read())
        assert answer["ok"] is True, answer
        return str(answer["offset"])

    def emit_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        if self.publisher is not None:
            self.publisher.emit_many([Message(EVENT, data, room=room) for room, data in items])
            return
        for room, data in items:
            self.emit(room, data)

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        for replica in self.replicas:
            replica.sigterm()
        for replica in self.replicas:
            replica.stop()


def _publisher(redis_url: str, settings: dict[str, str]) -> Publisher:
    """A producer configured as the replicas are (history length, window, prefixes)."""
    return Publisher(
        redis_url, key_prefix=settings["KEY_PREFIX"], channel_prefix=settings["CHANNEL_PREFIX"],
        history_max_len=int(settings.get("HISTORY_MAX_LEN", "1000")),
        recovery_window_s=float(settings.get("RECOVERY_WINDOW", "120")),
    )


def _start(replicas: list[GatewayProcess]) -> None:
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(20)
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise


class Deployments:
    """Deployments started on first use and kept for the module, one per (bus, settings)."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.started: dict[tuple[str, tuple[tuple[str, str], ...]], Deployment] = {}

    def get(self, kind: str, **settings: str) -> Deployment:
        key = (kind, tuple(sorted(settings.items())))
        if key not in self.started:
            self.started[key] = self._make(kind, dict(settings))
        return self.started[key]

    def _make(self, kind: str, settings: dict[str, str]) -> Deployment:
        n = len(self.started)
        if kind == "memory":
            env = {**COMMON_ENV, **settings}
            replicas = [GatewayProcess(env, name=f"memory{n}")]
            _start(replicas)
            return Deployment("memory", replicas, settings)
        # Three replicas with the defaults, two for special settings; each deployment has
        # prefixes of its own on the module's Redis.
        count = 2 if settings else 3
        settings = {"KEY_PREFIX": f"rt{n}", "CHANNEL_PREFIX": f"rt{n}.io", **settings}
        env = {**COMMON_ENV, **settings, "REDIS_URL": self.redis.url}
        replicas = [GatewayProcess(env, name=f"redis{n}-{i}") for i in range(count)]
        _start(replicas)
        return Deployment("redis", replicas, settings, self.redis, settings["KEY_PREFIX"],
                          _publisher(self.redis.url, settings))

    def stop(self) -> None:
        for deployment in self.started.values():
            deployment.stop()


# -- helpers -------------------------------------------------------------------------------------


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def token(user: str, classrooms: tuple[str, ...] = (), **kw: Any) -> str:
    return make_token(SECRET, user, classrooms=classrooms, **kw)


def payload(n: int, room: str) -> dict[str, Any]:
    return {"amount": 1, "reason": "test", "newBalance": n, "n": n, "room": room}


def numbers(events: list[Received]) -> list[int]:
    """The events' numbers, sorted, once each room's events are checked to have come in
    publish order within the room, which is what the bus promises (docs/wire-protocol.md:
    positions are per room; across rooms, order is the shards' clocks', not a promise)."""
    by_room: dict[str, list[int]] = {}
    for e in events:
        by_room.setdefault(str(e.payload.get("room")), []).append(e.payload["n"])
    for room, ns in by_room.items():
        assert ns == sorted(ns), f"events of {room} out of publish order: {ns}"
    return sorted(e.payload["n"] for e in events)


def connect(clients: NodeClients, name: str, url: str, tok: str, transport: str = "websocket",
            **opts: Any) -> dict[str, Any]:
    clients.connect(name, url, token=tok, transports=TRANSPORTS[transport], **{**FAST, **opts})
    record = clients.wait_connected(name, timeout=BACK_TIMEOUT)
    assert record["type"] == "connect", record
    return record


def rooms_of(clients: NodeClients, name: str) -> list[str]:
    answer = clients.emit(name, "subscribe:notifications")
    assert answer["ok"] is True, answer
    return sorted(answer["rooms"])


def go_away(clients: NodeClients, name: str, nowhere: str) -> None:
    """Drop the transport and keep the client away (reconnecting to a closed port)."""
    clients.set_uri(name, nowhere)
    clients.close_transport(name)
    dropped = clients.wait_disconnected(name)
    assert dropped["retrying"] is True, dropped


def come_back(clients: NodeClients, name: str, replica: GatewayProcess) -> dict[str, Any]:
    """Let the client reconnect, to `replica`; the outcome record (connect or connect_error)."""
    clients.set_uri(name, replica.url)
    return clients.wait_connected(name, timeout=BACK_TIMEOUT)


def recovery_outcomes(replica: GatewayProcess) -> dict[str, float]:
    """ws_recoveries_total by outcome: for failure messages only, never asserted on."""
    try:
        _, text = replica.http_get("/metrics")
    except OSError:
        return {}
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^ws_recoveries_total\{outcome="([^"]+)"\} (\S+)$', text, re.M)}


def settle(clients: NodeClients, name: str, count: int) -> list[Received]:
    """The socket's events once `count` have arrived and no more come in 0.3 s."""
    clients.wait_events(name, EVENT, count, timeout=BACK_TIMEOUT)
    clients.assert_no_event(name, EVENT, within=0.3, allowed=count)
    return clients.events(name, EVENT)


def quiet(clients: NodeClients, name: str, gap: float = 0.3) -> list[Received]:
    """The socket's events once none has arrived for `gap` seconds (at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        before = len(clients.events(name, EVENT))
        try:
            clients.wait_events(name, EVENT, before + 1, timeout=gap)
        except AssertionError:
            return clients.events(name, EVENT)
        assert time.monotonic() < deadline, "events keep coming"


class Producer:
    """Emits continuously from a thread, cycling through rooms; remembers what it published."""

    def __init__(self, deployment: Deployment, rooms: list[str], pause: float = 0.002,
                 start: int = 0) -> None:
        self.deployment = deployment
        self.start = start
        self.rooms = rooms
        self.pause = pause
        self.published: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        n = self.start
        while not self._stop.is_set():
            room = self.rooms[n % len(self.rooms)]
            try:
                self.deployment.emit(room, payload(n, room))
            except Exception as exc:  # noqa: BLE001 - reported by stop()
                self.errors.append(exc)
                return
            self.published.append(n)
            n += 1
            time.sleep(self.pause)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the producer did not stop"
        assert not self.errors, f"the producer failed: {self.errors!r}"
        return self.published


# Where a dropped client comes back: the replica it left, or another one (Redis only).
TARGETS = [
    pytest.param("redis", 0, id="redis-same-replica"),
    pytest.param("redis", 1, id="redis-other-replica"),
    pytest.param("memory", 0, id="memory"),
]
BUSES = [pytest.param("redis", id="redis"), pytest.param("memory", id="memory")]
