"""Drain: SIGTERM to one of two replicas on one Redis. Its readiness goes 503 at once and it
refuses new handshakes with 503; its clients lose their transport (not a Socket.IO
DISCONNECT), reconnect to the other replica and recover; every event published meanwhile
arrives once, in order; every client let go is logged; the process exits 0 in time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from functools import partial
from typing import Any

from publisher import Publisher
from tests.e2e.conftest import StartGateway
from tests.e2e.operations.support import (
    BASE_ENV,
    DRAIN_EXIT_SLACK,
    DRAIN_SECONDS,
    EVENT,
    LET_GO,
    WAIT,
    Producer,
    assert_no_user_ids,
    connect,
    engineio_handshake,
    explain,
    json_lines,
    numbers,
    on_websocket,
    payload,
    scrape,
    token,
    uid,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients


def unready(replica: GatewayProcess) -> tuple[int, str] | None:
    """(503, body) when the replica's readiness says no, else None."""
    status, body = replica.http_get("/readyz")
    return (status, body) if status == 503 else None


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
            pub.emit(EVENT, payload(0), room=room).result()
            node_clients.wait_events("p", EVENT, 1)
            relay.hold()  # the client's next poll waits at the relay
            pub.emit(EVENT, payload(1), room=room).result()
            pub.emit(EVENT, payload(2), room=room).result()
            time.sleep(0.3)  # queued on the leaving replica, with no poll to take them
            leaving.sigterm()
            wait_until(lambda: unready(leaving), 2.0, "/readyz answers 503", every=0.01)
            time.sleep(0.3)  # the drain has let the only client go: its CLOSE is queued
            relay.release()
            back = node_clients.wait_connected("p", timeout=WAIT)
            assert back["recovered"] is True, back
            assert back["sid"] == first["sid"], back
            pub.emit(EVENT, payload(3), room=room).result()
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
