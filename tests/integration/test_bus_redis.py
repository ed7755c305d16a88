"""The Redis bus (wire version 2, docs/wire-protocol.md), for real: gateway replicas as
processes, a redis-server of the test's own, the real socket.io-client, and Redis itself
inspected (`PUBSUB SHARDNUMSUB`) or written to directly.

- a replica listens to a room's sharded channel only while it holds a socket in that room;
- a producer written from docs/wire-protocol.md alone (plain redis-py calls, no `publisher`
  import) reaches clients;
- what is not a v2 envelope is counted and dropped, and the listener keeps working;
- Redis killed and restarted under live replicas: readiness goes 503 and comes back by itself,
  producers are told (never a silent drop), and events published afterwards arrive;
- whenever a replica's channels come back (Redis restarted, the subscriber dropped, writes
  lost): a room that can be caught up exactly is caught up once, in order; one that cannot has
  its sockets' transports closed, and their clients come back with `recovered: false`, never
  with a short replay.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.offsets import room_hash
from publisher import Publisher, PublisherError
from tests.support.checks import scrape, wait_until
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
COINS = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}
QUIET = 0.5
ENV = {"JWT_SECRET": SECRET, "PUBLISH_API_KEY": API_KEY, "DRAIN_SECONDS": "0",
       "HANDSHAKE_RATE_PER_IP": "10000"}
# Redis back after an outage: the replicas retry with a backoff capped at a few seconds.
RECOVERY = 30.0
# socket.io-client reconnects after 1 to 5 s (its default randomized backoff)
CLIENT_BACK = 15.0
LIFETIME_MS = 2 * 120_000  # a history stream's lifetime: 2 x RECOVERY_WINDOW (default 120 s)
EMPTY_SEQ = "18446744073709551615"


# -- helpers ---------------------------------------------------------------------------------


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def token(user: str, **claims: Any) -> str:
    return make_token(SECRET, user, **claims)




def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    return scrape(gw).get((name, tuple(sorted(labels.items()))), 0.0)


def status_of(gw: GatewayProcess, path: str) -> int | None:
    try:
        return gw.http_get(path, timeout=2)[0]
    except OSError:
        return None


def http_emit(gw: GatewayProcess, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        gw.url + "/api/emit", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def connect(clients: NodeClients, name: str, gw: GatewayProcess, tok: str,
            transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    clients.connect(name, gw.ns_url, token=tok, transports=[transport], **opts)
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record
    return record


def channel_of(room: str | None) -> str:
    """A room's sharded channel; None: the channel of events for everyone (`{*}`)."""
    return f"socket.io#/notifications#{{{'*' if room is None else room}}}#"


def history_of(room: str | None) -> str:
    return f"ngw:{{{'*' if room is None else room}}}:h"


def numsub(redis: RedisServer, room: str | None) -> int:
    client = redis.client()
    try:
        _, count = client.execute_command("PUBSUB", "SHARDNUMSUB", channel_of(room))
    finally:
        client.close()
    return int(count)


def b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def position_in(offset: str | None, room: str) -> str | None:
    """The `<ms>-<seq>` an event's offset (the socket's vector) gives for `room`."""
    assert offset is not None
    for part in offset.split(","):
        h, _, rest = part.partition(":")
        if h == room_hash(room).decode():
            ms, _, seq = rest.partition(".")
            return f"{int(ms, 36)}-{int(seq, 36)}"
    return None


def wait_back_unrecovered(clients: NodeClients, name: str) -> dict[str, Any]:
    """The replica closed the socket's transport (its room could not be caught up exactly):
    the client reconnects by itself and is told `recovered: false`."""
    dropped = clients.wait_disconnected(name, timeout=CLIENT_BACK)
    # WebSocket: "transport close"; long-polling: the next poll finds no session, "transport
    # error". Either way the client reconnects by itself (unlike "io server disconnect").
    assert dropped["reason"] in ("transport close", "transport error"), dropped
    back = clients.wait_connected(name, timeout=CLIENT_BACK)
    assert back["type"] == "connect", back
    assert back["recovered"] is False, f"{name} was recovered: a short replay, or lost events unsaid"
    return back


def transport_drops(clients: NodeClients, name: str) -> int:
    return [r["type"] for r in clients.log(name)].count("disconnect")


def show_logs(*replicas: GatewayProcess) -> None:
    for replica in replicas:
        print(f"-- {replica.name} log:\n{replica.log_tail(120)}")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(shared_redis: RedisServer) -> Iterator[GatewayCluster]:
    with GatewayCluster(2, shared_redis.url, ENV) as replicas:
        yield replicas
        show_logs(*replicas)


@pytest.fixture(scope="module")
def pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher


# -- channels follow the sockets -------------------------------------------------------------


def test_a_replica_listens_to_a_room_only_while_it_holds_a_socket_in_it(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher, shared_redis: RedisServer,
) -> None:
    r0, r1 = pair
    user, classroom = uid(), f"k{uuid.uuid4().hex[:8]}"
    room, croom = f"user:{user}", f"classroom:{classroom}"
    assert numsub(shared_redis, None) == 2, "every replica listens to the broadcast channel"
    assert numsub(shared_redis, room) == 0

    connect(clients, "a", r0, token(user, classrooms=[classroom]))
    assert numsub(shared_redis, room) == 1
    assert numsub(shared_redis, croom) == 1
    connect(clients, "a-tab", r0, token(user), "polling")
    assert numsub(shared_redis, room) == 1, "one subscription per replica, not per socket"
    connect(clients, "a-r1", r1, token(user))
    assert numsub(shared_redis, room) == 2
    assert numsub(shared_redis, croom) == 1

    clients.disconnect("a-r1")
    wait_until(lambda: numsub(shared_redis, room) == 1, 5, "r1 unsubscribed after its last socket left")
    clients.disconnect("a")
    assert numsub(shared_redis, room) == 1, "a-tab still holds the room on r0"
    wait_until(lambda: numsub(shared_redis, croom) == 0, 5, "the classroom's last socket left r0")
    clients.disconnect("a-tab")
    wait_until(lambda: numsub(shared_redis, room) == 0, 5, "r0 unsubscribed after its last socket left")

    # a producer's join and leave move the subscriptions too
    other = uid()
    extra = f"classroom:{uuid.uuid4().hex[:8]}"
    connect(clients, "b", r1, token(other))
    pub.join(other, extra)
    wait_until(lambda: numsub(shared_redis, extra) == 1, 2, "subscribed on join")
    pub.leave(other, extra)
    wait_until(lambda: numsub(shared_redis, extra) == 0, 2, "unsubscribed on leave")


# -- the wire protocol, from the document ----------------------------------------------------


def _publish_as_documented(redis: RedisServer, room: str | None, envelope: dict[str, Any]) -> tuple[str, int]:
    """docs/wire-protocol.md, "Publishing an event", by hand: EVAL of the documented script
    with KEYS[1] the room's history stream and ARGV history max length, lifetime
    (2 x RECOVERY_WINDOW), channel and envelope (plain JSON, no "o"): a batch of one."""
    script = (ROOT / "publisher" / "lua" / "publish.lua").read_text(encoding="utf-8")
    body = json.dumps(envelope, separators=(",", ":"))
    client = redis.client()
    try:
        position, receivers = client.eval(script, 1, history_of(room), 1000, LIFETIME_MS, channel_of(room), body)
    finally:
        client.close()
    return position.decode(), int(receivers)


def test_a_producer_written_from_the_wire_protocol_document(
    clients: NodeClients, pair: GatewayCluster, shared_redis: RedisServer,
) -> None:
    r0, r1 = pair
    user = uid()
    connect(clients, "a", r1, token(user))
    connect(clients, "b", r0, token(uid()))
    envelope = {"v": 2, "k": "e", "t": time.time() * 1000, "ev": "coins:earned", "d": COINS,
                "r": f"user:{user}", "trace": "unknown keys are ignored"}
    position, receivers = _publish_as_documented(shared_redis, f"user:{user}", envelope)
    assert receivers == 1, "exactly one replica listens to the user's channel"
    [event] = clients.wait_events("a", "coins:earned", 1)
    assert event.payload == COINS
    assert position_in(event.offset, f"user:{user}") == position, \
        "the client's offset carries the position the script assigned, for that room"
    clients.assert_no_event("b", within=QUIET)
    client = shared_redis.client()
    try:
        [(entry, fields)] = client.xrange(history_of(f"user:{user}"))
    finally:
        client.close()
    assert entry.decode() == position
    assert json.loads(fields[b"m"]) == envelope, "the history keeps the envelope as published, without o"

    everyone = {"v": 2, "k": "e", "t": time.time() * 1000, "ev": "system:notice", "d": {"x": 1},
                "r": None}
    _, receivers = _publish_as_documented(shared_redis, None, everyone)
    assert receivers == 2
    for name in ("a", "b"):
        assert clients.wait_events(name, "system:notice", 1)[0].payload == {"x": 1}


BAD_MESSAGES: dict[str, Callable[[str], bytes]] = {
    "version_1": lambda room: json.dumps({"v": 1, "k": "e", "t": 1.0, "ev": "coins:earned",
                                          "d": {}, "r": room, "o": "e:1-1"}).encode(),
    "unknown_version": lambda room: json.dumps({"v": 3, "k": "e", "t": 1.0, "ev": "coins:earned",
                                                "d": {}, "r": room, "o": "1-1"}).encode(),
    "msgpack_from_redis_emitter": lambda room: b"\x93\xa6emitter\x83\xa4type\x02",
    "not_json": lambda room: b"{this is not json",
    "no_position": lambda room: json.dumps({"v": 2, "k": "e", "t": 1.0, "ev": "coins:earned",
                                            "d": {}, "r": room}).encode(),
    "position_not_a_stream_id": lambda room: json.dumps({"v": 2, "k": "e", "t": 1.0, "ev": "coins:earned",
                                                         "d": {}, "r": room, "o": "e:1-1"}).encode(),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_what_is_not_a_v2_envelope_is_counted_and_dropped(
    clients: NodeClients, pair: GatewayCluster, pub: Publisher, shared_redis: RedisServer,
    case: str,
) -> None:
    r0 = pair[0]
    user = uid()
    connect(clients, "a", r0, token(user))
    before = metric(r0, "ws_errors_total", kind="bus_bad_envelope")
    client = shared_redis.client()
    try:
        assert client.spublish(channel_of(f"user:{user}"), BAD_MESSAGES[case](f"user:{user}")) == 1
    finally:
        client.close()
    wait_until(lambda: metric(r0, "ws_errors_total", kind="bus_bad_envelope") == before + 1, 3,
               f"{case}: counted in ws_errors_total{{kind=\"bus_bad_envelope\"}}")
    pub.emit("coins:earned", COINS, user=user).result()  # the listener is still there
    [event] = clients.wait_events("a", None, 1)
    assert (event.event, event.payload) == ("coins:earned", COINS)
    assert r0.alive()


def test_redis_over_a_unix_socket(clients: NodeClients) -> None:
    path = Path(tempfile.mkdtemp(prefix="ngw-sock-")) / "redis.sock"  # short: sun_path is 108 bytes
    server = RedisServer(None, "--unixsocket", str(path), "--unixsocketperm", "700")
    url = f"unix://{path}?db=0"
    try:
        server.start()
        with GatewayCluster(2, url, ENV) as cluster, Publisher(url) as publisher:
            try:
                user = uid()
                connect(clients, "a", cluster[0], token(user))
                connect(clients, "b", cluster[1], token(user))
                publisher.emit("coins:earned", COINS, user=user).result()
                for name in ("a", "b"):
                    assert clients.wait_events(name, "coins:earned", 1)[0].payload == COINS
                assert http_emit(cluster[1], {"event": "x:y", "all": True, "data": {}}) == 200
                for name in ("a", "b"):
                    clients.wait_events(name, "x:y", 1)
            finally:
                show_logs(*cluster)
    finally:
        server.stop()
        shutil.rmtree(path.parent, ignore_errors=True)


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ngw test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_redis_over_tls(clients: NodeClients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    server = RedisServer(None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                         "--tls-auth-clients", "no")
    url = f"rediss://127.0.0.1:{tls_port}/0"
    # The CA is trusted the standard way (OpenSSL's SSL_CERT_FILE), by the replicas and by us.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    try:
        server.start()
        with GatewayCluster(2, url, ENV) as cluster, Publisher(url) as publisher:
            try:
                user = uid()
                connect(clients, "a", cluster[0], token(user))
                connect(clients, "b", cluster[1], token(user), "polling")
                publisher.emit("coins:earned", COINS, user=user).result()
                for name in ("a", "b"):
                    assert clients.wait_events(name, "coins:earned", 1)[0].payload == COINS
                assert http_emit(cluster[0], {"event": "x:y", "user": user, "data": {}}) == 200
                for name in ("a", "b"):
                    clients.wait_events(name, "x:y", 1)
            finally:
                show_logs(*cluster)
    finally:
        server.stop()


# -- Redis goes away and comes back ----------------------------------------------------------


def test_redis_killed_and_restarted(clients: NodeClients, redis_server: RedisServer) -> None:
    cluster = GatewayCluster(2, redis_server.url, ENV)
    with cluster, Publisher(redis_server.url) as publisher:
        try:
            _outage_scenario(clients, cluster, redis_server, publisher)
        finally:
            show_logs(*cluster)


def _outage_scenario(clients: NodeClients, cluster: GatewayCluster, redis: RedisServer,
                     publisher: Publisher) -> None:
    r0, r1 = cluster
    alice, bob = uid(), uid()
    classroom = f"k{uuid.uuid4().hex[:8]}"
    connect(clients, "alice", r0, token(alice, classrooms=[classroom]))
    connect(clients, "bob", r1, token(bob, classrooms=[classroom]), "polling")
    publisher.emit("coins:earned", {**COINS, "n": 0}, room=f"classroom:{classroom}").result()
    for name in ("alice", "bob"):
        clients.wait_events(name, "coins:earned", 1)
    reconnects = [metric(r, "bus_reconnects_total") for r in cluster]

    redis.kill()
    for replica in cluster:
        wait_until(lambda replica=replica: status_of(replica, "/readyz") == 503, 10,
                   f"{replica.name} not ready while Redis is down")
        assert status_of(replica, "/healthz") == 200, "alive, only not ready"
    with pytest.raises(PublisherError):
        publisher.emit("coins:earned", {**COINS, "n": "lost"}, user=alice).result()
    assert http_emit(r0, {"event": "coins:earned", "user": alice, "data": COINS}) >= 500, \
        "the HTTP endpoint must not answer 200 for an event it could not put on the bus"
    for name in ("alice", "bob"):
        assert transport_drops(clients, name) == 0, "clients stay connected through a bus outage"

    redis.restart()  # empty: the classroom's history, with the event both were given, is gone
    for replica in cluster:
        wait_until(lambda replica=replica: status_of(replica, "/readyz") == 200, RECOVERY,
                   f"{replica.name} ready again by itself", every=0.1)
    # The classroom cannot be caught up exactly (its stream, holding both clients' position, was
    # lost within its lifetime): the replicas close their transports, the clients come back told.
    for name in ("alice", "bob"):
        wait_back_unrecovered(clients, name)

    # published after readiness came back: every one arrives, where it should
    publisher.emit("coins:earned", {**COINS, "n": 1}, user=alice).result()
    publisher.emit("coins:earned", {**COINS, "n": 2}, user=bob).result()
    publisher.emit("coins:earned", {**COINS, "n": 3}, room=f"classroom:{classroom}").result()
    publisher.emit("coins:earned", {**COINS, "n": 4}, broadcast=True).result()
    expected = {"alice": [0, 1, 3, 4], "bob": [0, 2, 3, 4]}
    for name, ns in expected.items():
        events = clients.wait_events(name, "coins:earned", len(ns), timeout=10)
        assert [e.payload["n"] for e in events] == ns, name
        clients.assert_no_event(name, "coins:earned", within=QUIET / 2, allowed=len(ns))

    # new connections and the HTTP endpoint work again too
    carol = uid()
    connect(clients, "carol", r1, token(carol))
    assert http_emit(r0, {"event": "coins:earned", "user": carol, "data": COINS}) == 200
    assert clients.wait_events("carol", "coins:earned", 1)[0].payload == COINS
    for replica, before in zip(cluster, reconnects, strict=True):
        assert metric(replica, "bus_reconnects_total") > before, f"{replica.name} counts its reconnection"

    # Redis lost everything: presence is rebuilt by the replicas (connections, heartbeats)
    wait_until(lambda: publisher.is_online(alice) and publisher.is_online(bob), 15,
               "presence rebuilt after Redis lost its data", every=0.2)
    # and control messages reach the sockets again
    classroom2 = f"classroom:k{uuid.uuid4().hex[:8]}"
    publisher.join(alice, classroom2)
    publisher.emit("coins:earned", {**COINS, "n": 5}, room=classroom2).result()
    assert clients.wait_events("alice", "coins:earned", 5)[-1].payload["n"] == 5
    publisher.disconnect_user(bob)
    dropped = clients.wait_disconnected("bob", timeout=5)
    assert dropped["reason"] == "io server disconnect"


def test_events_published_before_the_replicas_are_back(
    clients: NodeClients, redis_server: RedisServer,
) -> None:
    """Redis is back (empty), a producer publishes at once (it succeeds: Redis takes it), the
    replicas are still in their reconnection backoff. The events are in Redis's history; once
    the replicas are back, each room is caught up exactly or not at all:

    - bob's room had no event before: its position is "empty at" a time, and the new stream was
      never trimmed, so the catch-up is exact: bob gets the event, once, still connected;
    - alice's room held her last event in the stream Redis lost: the new stream cannot say what
      came between, so her transport is closed and she comes back with `recovered: false`.

    The replicas are suspended (SIGSTOP) from the moment they noticed the outage until the
    events are published, so none can reconnect first, whatever its backoff's jitter."""
    cluster = GatewayCluster(2, redis_server.url, ENV)
    with cluster, Publisher(redis_server.url) as publisher:
        try:
            r0, r1 = cluster
            alice, bob = uid(), uid()
            connect(clients, "alice", r0, token(alice))
            connect(clients, "bob", r1, token(bob))
            publisher.emit("coins:earned", {**COINS, "n": 0}, user=alice).result()
            clients.wait_events("alice", "coins:earned", 1)
            redis_server.kill()
            for replica in cluster:
                wait_until(lambda replica=replica: status_of(replica, "/readyz") == 503, 10, "not ready")
            for replica in cluster:
                replica.suspend()
            try:
                redis_server.start()
                publisher.emit("coins:earned", {**COINS, "n": 1}, user=alice).result()
                publisher.emit("coins:earned", {**COINS, "n": 2}, user=bob).result()
            finally:
                for replica in cluster:
                    replica.resume()
            for replica in cluster:
                wait_until(lambda replica=replica: status_of(replica, "/readyz") == 200, RECOVERY,
                           f"{replica.name} ready again", every=0.1)
            assert [e.payload["n"] for e in clients.wait_events("bob", "coins:earned", 1)] == [2]
            clients.assert_no_event("bob", "coins:earned", within=QUIET, allowed=1)
            assert transport_drops(clients, "bob") == 0, "bob's room was caught up: no reason to drop him"
            wait_back_unrecovered(clients, "alice")
            assert [e.payload["n"] for e in clients.events("alice", "coins:earned")] == [0], \
                "never a short replay: n=1 alone, after a position Redis lost, is not given"
            publisher.emit("coins:earned", {**COINS, "n": 3}, user=alice).result()
            assert [e.payload["n"] for e in clients.wait_events("alice", "coins:earned", 2)] == [0, 3]
        finally:
            show_logs(*cluster)


def _publish_while_dropping_subscribers(redis: RedisServer, room: str, envelope: dict[str, Any]) -> tuple[int, int]:
    """`CLIENT KILL TYPE pubsub` and a publish (docs: "Publishing an event") in one transaction."""
    script = (ROOT / "publisher" / "lua" / "publish.lua").read_text(encoding="utf-8")
    client = redis.client()
    try:
        pipe = client.pipeline(transaction=True)
        pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        pipe.eval(script, 1, history_of(room), 1000, LIFETIME_MS, channel_of(room), json.dumps(envelope))
        killed, (_, receivers) = pipe.execute()
    finally:
        client.close()
    return int(killed), int(receivers)


@pytest.mark.parametrize("received_before", [
    pytest.param(True, id="after_an_event"),
    pytest.param(False, id="before_any_event"),
])
def test_events_published_while_redis_drops_the_subscriber_are_caught_up(
    clients: NodeClients, redis_server: RedisServer, received_before: bool,
) -> None:
    """Redis closes the replicas' pub/sub connections (as `client-output-buffer-limit pubsub`
    does to a slow subscriber) and, in the same transaction, an event is published: no replica
    is listening when it is published, but Redis keeps it (no data is lost). The replicas
    reconnect within their first backoff step and catch the room up from its history: exactly,
    once, in order, and the client stays connected."""
    cluster = GatewayCluster(2, redis_server.url, ENV)
    with cluster, Publisher(redis_server.url) as publisher:
        try:
            alice = uid()
            connect(clients, "alice", cluster[0], token(alice))
            if received_before:
                publisher.emit("coins:earned", {**COINS, "n": 0}, user=alice).result()
                clients.wait_events("alice", "coins:earned", 1)
            reconnects = metric(cluster[0], "bus_reconnects_total")
            envelope = {"v": 2, "k": "e", "t": time.time() * 1000, "ev": "coins:earned",
                        "d": {**COINS, "n": 1}, "r": f"user:{alice}"}
            killed, receivers = _publish_while_dropping_subscribers(redis_server, f"user:{alice}", envelope)
            assert killed >= 2, "every replica's pub/sub connection was closed"
            assert receivers == 0, "nobody was listening when the event was published"
            wait_until(lambda: metric(cluster[0], "bus_reconnects_total") > reconnects, 10, "reconnected")
            expected = [0, 1] if received_before else [1]
            events = clients.wait_events("alice", "coins:earned", len(expected), timeout=10)
            assert [e.payload["n"] for e in events] == expected
            clients.assert_no_event("alice", "coins:earned", within=QUIET, allowed=len(expected))
            publisher.emit("coins:earned", {**COINS, "n": 2}, user=alice).result()
            events = clients.wait_events("alice", "coins:earned", len(expected) + 1, timeout=10)
            assert [e.payload["n"] for e in events] == [*expected, 2], "live again, after the catch-up"
            assert transport_drops(clients, "alice") == 0, "an exact catch-up keeps the socket"
        finally:
            show_logs(*cluster)


@pytest.mark.parametrize("noticed", [
    pytest.param("bus_stays", id="the_bus_connection_stays"),
    pytest.param("bus_reconnects", id="the_bus_connection_comes_back"),
    pytest.param("client_drops", id="the_client_drops_later"),
])
def test_after_redis_lost_its_last_writes(
    clients: NodeClients, redis_server: RedisServer, noticed: str,
) -> None:
    """What a failover leaves when the replica had not yet received the primary's last writes
    (Redis replication is asynchronous, docs: "What a failover can lose"): the room's stream is
    as it was before them, though the clients were sent them. Simulated by restoring the stream
    as it was (DUMP before, RESTORE after: its last ID and entries-added too).

    - the bus connection stays: events published afterwards still arrive (positions are stream
      IDs, given by time: the new ones come after what the client has);
    - the replica's bus connection comes back (as in a real failover): the room cannot be caught
      up exactly, so the socket's transport is closed and the client is told `recovered: false`;
    - the client drops later: its position no longer exists, it is told `recovered: false`."""
    cluster = GatewayCluster(1, redis_server.url, ENV)
    with cluster, Publisher(redis_server.url) as publisher:
        try:
            alice = uid()
            room = f"user:{alice}"
            connect(clients, "alice", cluster[0], token(alice))
            client = redis_server.client()
            try:
                publisher.emit("coins:earned", {**COINS, "n": 0}, user=alice).result()
                kept = client.dump(history_of(room))
                publisher.emit("coins:earned", {**COINS, "n": 1}, user=alice).result()  # delivered, then lost
                publisher.emit("coins:earned", {**COINS, "n": 2}, user=alice).result()  # delivered, then lost
                clients.wait_events("alice", "coins:earned", 3)
                client.restore(history_of(room), LIFETIME_MS, kept, replace=True)  # the last two are gone
                assert len(client.xrange(history_of(room))) == 1
                if noticed == "bus_reconnects":
                    assert int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")) >= 1
            finally:
                client.close()
            if noticed == "bus_reconnects":
                wait_back_unrecovered(clients, "alice")
            elif noticed == "client_drops":
                clients.close_transport("alice")
                back = clients.wait_connected("alice", timeout=CLIENT_BACK)
                assert back["recovered"] is False, "its position was lost: never a short replay"
            publisher.emit("coins:earned", {**COINS, "n": 3}, user=alice).result()
            publisher.emit("coins:earned", {**COINS, "n": 4}, user=alice).result()
            events = clients.wait_events("alice", "coins:earned", 5)
            assert [e.payload["n"] for e in events] == [0, 1, 2, 3, 4]
            clients.assert_no_event("alice", "coins:earned", within=QUIET, allowed=5)
            if noticed == "bus_stays":
                assert transport_drops(clients, "alice") == 0
        finally:
            show_logs(*cluster)
