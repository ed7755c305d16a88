"""Clients that never read while events are sent to them: the replica's memory stays bounded
(SEND_BUFFER_LIMIT per socket), the client is let go (its transport closed, so a real client
would reconnect and recover), `ws_errors_total{kind="slow_consumer"}` moves, and the other
users of the same rooms keep receiving every event."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import orjson

from publisher import Publisher
from tests.hostile.conftest import StartGateway
from tests.hostile.rawws import NS, Closed, RawWS, connected
from tests.hostile.support import (
    COINS,
    EVENT,
    MIB,
    Feeder,
    assert_all_received,
    base_env,
    connect_good,
    log_problems,
    metric,
    rss_kib,
    rss_peak_kib,
    token,
    uid,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

LIMIT = 65536
BIG = 32_000  # bytes of payload per large event
LARGE_EVENTS = 300  # ~9.6 MB to each slow client: well past the kernel's buffers and the limit
SLOW_CLIENTS = 20


def drain_until_closed(ws: RawWS, timeout: float) -> tuple[int, bool]:
    """Read what the replica wrote before it let the client go; (bytes, closed)."""
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            _, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
            got += len(payload)
    except Closed:
        return got, True
    except TimeoutError:
        return got, False
    return got, False


def test_clients_that_never_read_are_let_go_and_memory_stays_bounded(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, SEND_BUFFER_LIMIT=str(LIMIT)))
    classroom = uid("c")
    good = uid("good")
    connect_good(node_clients, "good", gw, token(jwt_secret, good, classrooms=[classroom]))
    slow = [connected(gw.port, token(jwt_secret, uid("slow"), classrooms=[classroom]), rcvbuf=4096)[0]
            for _ in range(SLOW_CLIENTS)]
    rss_before = rss_kib(gw)
    errors_before = metric(gw, "ws_errors_total", kind="slow_consumer")
    blob = "x" * BIG
    large_sent: list[int] = []
    with Feeder(pub, good, least=200) as feeder:
        for i in range(LARGE_EVENTS):
            pub.emit("notification:bulk", {"i": i, "blob": blob}, room=f"classroom:{classroom}").result()
            large_sent.append(i)
    # the well-behaved user got every event: its own, and every large one of the shared room
    received = assert_all_received(node_clients, "good", feeder.sent, timeout=30)
    bulk = node_clients.wait_events("good", "notification:bulk", LARGE_EVENTS, timeout=30)
    assert [e.payload["i"] for e in bulk] == large_sent
    peak = rss_peak_kib(gw)
    rss_after = rss_kib(gw)

    outcomes = [drain_until_closed(ws, 10) for ws in slow]
    for ws in slow:
        ws.close()
    let_go = sum(closed for _, closed in outcomes)
    delivered = [got for got, _ in outcomes]
    print(f"\nslow consumers: {SLOW_CLIENTS} clients that never read, {LARGE_EVENTS} events of {BIG // 1000} kB "
          f"({LARGE_EVENTS * BIG / MIB:.1f} MiB) to each; RSS before {rss_before / 1024:.1f} MiB, peak "
          f"{peak / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB; let go {let_go} of {SLOW_CLIENTS}, having "
          f"been written {min(delivered) / MIB:.1f}-{max(delivered) / MIB:.1f} MiB each before the cut; the "
          f"well-behaved client received {received} + {len(bulk)} of {len(feeder.sent)} + {LARGE_EVENTS} events")
    assert let_go == SLOW_CLIENTS
    # The well-behaved client reads, but on a saturated machine it can fall behind the same
    # bound once and be let go too; it then reconnects and recovers (it got every event above).
    good_cut = sum(1 for r in node_clients.log("good") if r["type"] == "disconnect")
    assert good_cut <= 1, f"the reading client was let go {good_cut} times"
    assert metric(gw, "ws_errors_total", kind="slow_consumer") - errors_before == SLOW_CLIENTS + good_cut
    assert metric(gw, "ws_disconnects_total", reason="slow_consumer") == SLOW_CLIENTS + good_cut
    # Once they are let go the replica holds nothing for them (20 x 9.2 MiB without the bound);
    # the peak while it happens is the burst test's business, below.
    assert (rss_after - rss_before) / 1024 < 16, f"RSS held {(rss_after - rss_before) / 1024:.0f} MiB more"
    assert metric(gw, "ws_connections_active") == 1
    assert log_problems(gw) == []


def test_a_slow_client_alone_in_its_room_is_let_go(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    """Events to the slow user's own room; another user, elsewhere, keeps receiving."""
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, SEND_BUFFER_LIMIT=str(LIMIT)))
    good, slow_user = uid("good"), uid("slow")
    connect_good(node_clients, "good", gw, token(jwt_secret, good))
    ws, _ = connected(gw.port, token(jwt_secret, slow_user), rcvbuf=4096)
    rss_before = rss_kib(gw)
    blob = "y" * 60_000
    with Feeder(pub, good, least=100) as feeder:
        for i in range(200):
            pub.emit(EVENT, {**COINS, "n": i, "blob": blob}, user=slow_user).result()
    assert_all_received(node_clients, "good", feeder.sent)
    got, closed = drain_until_closed(ws, 10)
    ws.close()
    grown = (rss_kib(gw) - rss_before) / 1024
    print(f"\nslow consumer alone: 200 x 60 kB to it; let go: {closed} after {got / MIB:.1f} MiB; RSS +{grown:.1f} MiB")
    assert closed
    assert metric(gw, "ws_errors_total", kind="slow_consumer") == 1
    assert grown < 24


BURST_SLOW = 100


def test_the_burst_is_more_than_the_kernel_can_buffer_for_one_socket() -> None:
    """What makes every socket of the burst test overflow: a socket's kernel send buffer grows
    to tcp_wmem's maximum at most, and the burst sends each one more than that plus the limit."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    assert wmem_max + LIMIT < LARGE_EVENTS * BIG, f"raise LARGE_EVENTS: tcp_wmem max is {wmem_max}"


def test_the_send_buffer_limit_bounds_each_slow_socket_even_in_a_burst(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, pub: Publisher,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, SEND_BUFFER_LIMIT=str(LIMIT)))
    classroom = uid("c")
    slow = [connected(gw.port, token(jwt_secret, uid("slow"), classrooms=[classroom]), rcvbuf=4096)[0]
            for _ in range(BURST_SLOW)]
    rss_before = rss_kib(gw)
    blob = "x" * BIG
    with pub.pipeline() as batch:  # one burst: the replica reads it in a few Redis reads
        for i in range(LARGE_EVENTS):
            batch.emit("notification:bulk", {"i": i, "blob": blob}, room=f"classroom:{classroom}")
    # Nothing is read before the replica has written the whole burst: a socket read while the
    # burst is still arriving is not a slow consumer (the first one drained used to receive all
    # 9.6 MB and never be let go). By then each socket was sent more than the kernel holds for
    # it (the test above), so each one has passed the limit.
    wait_until(lambda: metric(gw, "bus_messages_received_total", kind="event") >= LARGE_EVENTS, 30,
               f"the replica read the {LARGE_EVENTS} events of the burst from the bus")
    outcomes = [drain_until_closed(ws, 10) for ws in slow]
    for ws in slow:
        ws.close()
    peak = (rss_peak_kib(gw) - rss_before) / 1024
    bound = BURST_SLOW * 2 * (LIMIT + BIG) / MIB + 48
    print(f"\nslow consumers in a burst: {BURST_SLOW} clients, {LARGE_EVENTS} x {BIG // 1000} kB pipelined; RSS peak "
          f"+{peak:.0f} MiB (bound {bound:.0f} MiB); let go {sum(c for _, c in outcomes)} of {BURST_SLOW}")
    let_go = sum(closed for _, closed in outcomes)
    assert let_go == BURST_SLOW, f"only {let_go} of {BURST_SLOW} slow sockets were let go"
    assert peak < bound, f"RSS peaked {peak:.0f} MiB above the start for {BURST_SLOW} slow sockets"


class PollingClient:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        status, body = self.request("GET", "EIO=4&transport=polling")
        assert status == 200, body
        self.sid = orjson.loads(body[1:])["sid"]
        self.query = f"EIO=4&transport=polling&sid={self.sid}"

    def request(self, method: str, query: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=timeout)
        try:
            conn.request(method, "/socket.io/?" + query, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def test_a_polling_client_that_stops_polling_is_bounded_by_the_send_buffer_limit(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    gw = start_gateway(base_env(jwt_secret, REDIS_URL=shared_redis.url, SEND_BUFFER_LIMIT=str(LIMIT)))
    good, slow_user = uid("good"), uid("pslow")
    connect_good(node_clients, "good", gw, token(jwt_secret, good))
    client = PollingClient(gw)
    tok = token(jwt_secret, slow_user)
    assert client.request("POST", client.query, f"40{NS},{orjson.dumps({'token': tok}).decode()}".encode()) \
        == (200, b"ok")
    assert client.request("GET", client.query)[1].startswith(f"40{NS},".encode())
    rss_before = rss_kib(gw)
    blob = "z" * 60_000
    with Feeder(pub, good, least=100) as feeder:
        for i in range(300):  # 18 MB, under the 1000-packet cap
            pub.emit(EVENT, {**COINS, "n": i, "blob": blob}, user=slow_user).result()
    assert_all_received(node_clients, "good", feeder.sent)
    time.sleep(0.5)  # let the last events reach the queue (nothing observable from outside)
    grown = (rss_kib(gw) - rss_before) / 1024
    held = metric(gw, "ws_errors_total", kind="slow_consumer")
    status, body = client.request("GET", client.query, timeout=10)
    print(f"\npolling slow consumer: RSS +{grown:.1f} MiB; slow_consumer count {held:.0f}; "
          f"the next poll returned HTTP {status} with {len(body) / MIB:.1f} MiB")
    assert held == 1
    assert len(body) <= 4 * LIMIT, f"the replica held {len(body) / MIB:.1f} MiB for one polling client"
    assert grown < 16
