"""What the cluster tests share: gateway replicas and a producer on a real Redis Cluster
(tests/support/redis_cluster.py), rooms picked by the shard that owns them, per-room checks of
what a socket received, a watch on readiness, and a producer thread.

The client steps (connect, go away, come back, settle) and the deployment are those of the
recovery tests (tests/e2e/recovery/support.py); the producer that remembers each event's room
is the operations tests' one.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from publisher import Publisher
from tests.e2e.operations.support import Producer, explain
from tests.e2e.recovery.support import (
    API_KEY,
    BACK_TIMEOUT,
    COMMON_ENV,
    EVENT,
    Deployment,
    come_back,
    connect,
    go_away,
    payload,
    quiet,
    recovery_outcomes,
    rooms_of,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients, Received

__all__ = [
    "BACK_TIMEOUT", "COMMON_ENV", "EVENT", "STARTED", "Deployment", "Producer", "ReadinessWatch",
    "assert_never_short", "by_room",
    "come_back", "connect", "explain", "go_away", "http_emit", "one_per_shard", "payload",
    "quiet", "recovery_outcomes", "rooms_of", "shard_of", "start_deployment", "token", "uid",
    "wait_for", "wait_published", "wait_settled",
]

READY_TIMEOUT = 30.0
EFFECTIVE = 3.0  # "effective within a second", with room for two shared cores

# Every replica and cluster the tests start, so that a failing test prints their logs.
STARTED: list[GatewayProcess] = []
CLUSTERS: list[RedisCluster] = []


# -- deployments ---------------------------------------------------------------------------------


def start_deployment(cluster: RedisCluster, count: int = 2, name: str = "cl",
                     **settings: str) -> Deployment:
    """`count` replicas with REDIS_URL=<the cluster's redis+cluster:// URL>, every node of the
    cluster as a seed, ready; and a Publisher on the same URL with the same settings."""
    settings = {"KEY_PREFIX": "ngw", "CHANNEL_PREFIX": "socket.io", **settings}
    url = cluster.url()
    env = {**COMMON_ENV, **settings, "REDIS_URL": url}
    replicas = [GatewayProcess(env, name=f"{name}-{i}") for i in range(count)]
    STARTED.extend(replicas)
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(READY_TIMEOUT)
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    pub = Publisher(url, key_prefix=settings["KEY_PREFIX"], channel_prefix=settings["CHANNEL_PREFIX"],
                    history_max_len=int(settings.get("HISTORY_MAX_LEN", "1000")),
                    recovery_window_s=float(settings.get("RECOVERY_WINDOW", "120")))
    return Deployment("cluster", replicas, settings, None, settings["KEY_PREFIX"], pub)


def http_emit(replica: GatewayProcess, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/emit on one replica; its JSON answer (a 200 is asserted)."""
    request = urllib.request.Request(
        replica.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(resp.read())
    assert answer["ok"] is True, answer
    return answer


# -- shards --------------------------------------------------------------------------------------


def shard_of(cluster: RedisCluster, room: str) -> int:
    """The port of the primary that owns the room's slot: its history, its channel and, for
    `user:<id>`, the user's sessions (every name of a room carries `{<room>}`)."""
    return cluster.primary_for("{" + room + "}")


def one_per_shard(cluster: RedisCluster, make: Callable[[str], str], prefix: str = "u",
                  ports: Iterable[int] | None = None) -> dict[int, tuple[str, str]]:
    """For each primary (or each of `ports`): (id, room) with `room = make(id)` on that
    primary's slots, ids fresh. E.g. `one_per_shard(cluster, lambda u: f"user:{u}")`."""
    wanted = set(cluster.primary_ports() if ports is None else ports)
    found: dict[int, tuple[str, str]] = {}
    for _ in range(500):
        ident = uid(prefix)
        room = make(ident)
        port = shard_of(cluster, room)
        if port in wanted and port not in found:
            found[port] = (ident, room)
            if len(found) == len(wanted):
                return found
    raise AssertionError(f"no room on each of {sorted(wanted)} in 500 tries: {found}")


# -- what a socket received ----------------------------------------------------------------------


def by_room(events: list[Received]) -> dict[str, list[int]]:
    """The numbers a socket received, per room (from the payload), in arrival order."""
    out: dict[str, list[int]] = {}
    for e in events:
        out.setdefault(str(e.payload["room"]), []).append(e.payload["n"])
    return out


def wait_settled(clients: NodeClients, name: str, count: int, timeout: float = BACK_TIMEOUT) -> list[Received]:
    """The socket's events once at least `count` have arrived and none more for 0.3 s (more
    than `count` is returned as is, for the caller to show)."""
    clients.wait_events(name, EVENT, count, timeout=timeout)
    return quiet(clients, name)


# -- readiness -----------------------------------------------------------------------------------


class ReadinessWatch:
    """Samples GET /readyz of each replica from a thread, every `every` s, until stopped:
    what each said, in order (a refused connection is recorded as 0)."""

    def __init__(self, replicas: list[GatewayProcess], every: float = 0.05) -> None:
        self.replicas = replicas
        self.every = every
        self.samples: list[list[int]] = [[] for _ in replicas]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, replica in enumerate(self.replicas):
                try:
                    status, _ = replica.http_get("/readyz", timeout=1.0)
                except OSError:
                    status = 0
                with self._lock:
                    self.samples[i].append(status)
            self._stop.wait(self.every)

    def statuses(self, i: int) -> list[int]:
        with self._lock:
            return list(self.samples[i])

    def went_down(self, i: int) -> bool:
        return any(s != 200 for s in self.statuses(i))

    def back_up(self, i: int) -> bool:
        """Down at some point, and 200 since."""
        got = self.statuses(i)
        down = [k for k, s in enumerate(got) if s != 200]
        return bool(down) and down[-1] < len(got) - 1

    def summary(self, i: int) -> str:
        """Runs of equal statuses: `200x12 503x40 200x3`."""
        runs: list[list[int]] = []
        for s in self.statuses(i):
            if runs and runs[-1][0] == s:
                runs[-1][1] += 1
            else:
                runs.append([s, 1])
        return " ".join(f"{s}x{n}" for s, n in runs)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_for(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `probe` until truthy; fail saying `what` (and `describe()` if given) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


def wait_published(producer: Producer, more: int, timeout: float = 10.0) -> None:
    """Until the producer has published `more` events beyond what it had (or failed)."""
    target = len(producer.published) + more
    wait_for(lambda: len(producer.published) >= target or producer.errors, timeout,
             f"the producer published {more} more events")
    assert not producer.errors, f"the producer failed: {producer.errors!r}"


def assert_never_short(clients: NodeClients, name: str, expected: dict[str, list[int]]) -> dict[str, Any]:
    """What a socket got, judged against every event published to its rooms (`expected`: room
    -> numbers in publish order, from before the socket first connected to the end):

    - a session runs from a connection told `recovered: false` (the first one included) up to
      the next such one; a connection told `recovered: true` continues the session, same sid;
    - within a session, each room's numbers are a run of `expected[room]` without a gap, a
      repeat or a swap (the first session's from its start): a recovery is exact or refused;
    - the last session reaches the end of each room it got events of.

    Returns {"connects": [(sid, recovered)...], "sessions": [by_room...]} for messages."""
    records = clients.log(name)
    connects: list[tuple[str, bool]] = []
    sessions: list[dict[str, list[int]]] = [{}]
    for record in records:
        if record["type"] == "connect":
            if connects and record["recovered"]:
                assert record["sid"] == connects[-1][0], f"{name}: recovered with another sid: {record}"
            elif connects:
                sessions.append({})
            connects.append((record["sid"], bool(record["recovered"])))
        elif record["type"] == "event" and record["event"] == EVENT:
            got = Received.from_record(record)
            sessions[-1].setdefault(str(got.payload["room"]), []).append(got.payload["n"])
    seen = {"connects": connects, "sessions": sessions}
    for k, session in enumerate(sessions):
        for room, ns in session.items():
            all_of_room = expected[room]
            start = 0 if k == 0 else (all_of_room.index(ns[0]) if ns[0] in all_of_room else -1)
            assert start >= 0, f"{name}, session {k}, {room}: {ns[0]} was never published; {seen}"
            assert ns == all_of_room[start:start + len(ns)], (
                f"{name}, session {k} of {len(sessions)}, {room}: got {ns}, a gap, repeat or swap in "
                f"{all_of_room}; {seen}")
    for room, ns in sessions[-1].items():
        assert ns[-1] == expected[room][-1], f"{name}: the last session stops short in {room}: {seen}"
    return seen
