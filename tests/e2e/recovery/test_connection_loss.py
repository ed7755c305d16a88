"""However the connection died, the client recovers: a TCP connection destroyed without a close
frame, a half-open connection the replica still holds, a replica that drains or is killed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

import pytest

from tests.e2e.conftest import StartGateway
from tests.e2e.recovery.support import (
    BACK_TIMEOUT,
    COMMON_ENV,
    EVENT,
    TARGETS,
    Deployment,
    Deployments,
    Producer,
    _publisher,
    come_back,
    connect,
    go_away,
    numbers,
    payload,
    recovery_outcomes,
    rooms_of,
    settle,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients


def active_connections(replica: GatewayProcess) -> int:
    _, text = replica.http_get("/metrics")
    found = re.search(r"^ws_connections_active (\S+)$", text, re.M)
    assert found is not None, "ws_connections_active is missing from /metrics"
    return int(float(found.group(1)))


def wait_active(replica: GatewayProcess, expected: int, timeout: float = 10.0) -> None:
    """Poll the replica's ws_connections_active until it is `expected` (bounded)."""
    deadline = time.monotonic() + timeout
    while (active := active_connections(replica)) != expected:
        assert time.monotonic() < deadline, f"{replica.name}: {active} connections, expected {expected}"
        time.sleep(0.1)


class HalfOpenProxy:
    """A TCP relay to a replica whose path can die the way a phone's does when it changes
    network: `cut()` closes the client's side (the client sees its transport die and
    reconnects) but keeps the replica's side open and silent, so the replica only finds out
    by its ping timeout."""

    def __init__(self, target: GatewayProcess) -> None:
        self.target = (target.host, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_off = threading.Event()
        self._clients: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._clients.append(client)
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if not self.cut_off.is_set():
                with contextlib.suppress(OSError):
                    dst.sendall(data)
        if not self.cut_off.is_set():
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()
        self.listener.close()
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def close(self) -> None:
        if not self.cut_off.is_set():
            self.cut()


@pytest.mark.parametrize(("bus", "target"), TARGETS)
def test_abrupt_drop_without_a_close_frame_recovers(
    node_clients: NodeClients, deployments: Deployments, bus: str, target: int,
) -> None:
    """The TCP connection is destroyed with no WebSocket close frame (a pulled cable) and the
    client comes straight back: the server may still hold the old transport."""
    dep = deployments.get(bus)
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user))
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    for n in range(1, 4):
        node_clients.set_uri("a", dep.replica(target * n).url)
        node_clients.close_transport("a", mode="terminate")
        dep.emit(room, payload(n, room))
        back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
        assert back["type"] == "connect", back
        assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(target * n))}"
        assert back["sid"] == first["sid"]
        assert numbers(settle(node_clients, "a", n + 1)) == list(range(n + 1))


@pytest.mark.parametrize(("bus", "target"), TARGETS)
def test_recovery_while_the_old_connection_is_still_open_on_the_server(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str, target: int,
) -> None:
    """The client's network changes: its old TCP connection is dead but the replica does not
    know it until its ping timeout. The client recovers at once (on that replica or another);
    when the replica finally drops the old connection, the recovered socket keeps its rooms
    and its session."""
    dep = deployments.get(bus, PING_INTERVAL="1000", PING_TIMEOUT="1000")
    user = uid()
    room = f"user:{user}"
    proxy = HalfOpenProxy(dep.replica(0))
    try:
        first = connect(node_clients, "a", proxy.url + "/notifications", token(user))
        dep.emit(room, payload(0, room))
        node_clients.wait_events("a", EVENT, 1)

        node_clients.set_uri("a", dep.replica(target).url)
        proxy.cut()
        dep.emit(room, payload(1, room))
        back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
        assert back["type"] == "connect", back
        assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(target))}"
        assert back["sid"] == first["sid"]
        dep.emit(room, payload(2, room))
        assert numbers(settle(node_clients, "a", 3)) == [0, 1, 2]

        # The replica drops the dead connection at its ping timeout (its TCP side may stay
        # open a little longer: a WebSocket close waits for the peer's close frame).
        wait_active(dep.replica(0), 1 if target % len(dep.replicas) == 0 else 0)
        dep.emit(room, payload(3, room))
        assert numbers(settle(node_clients, "a", 4)) == [0, 1, 2, 3]
        assert rooms_of(node_clients, "a") == [room]
        assert node_clients.state("a")["connected"] is True

        go_away(node_clients, "a", nowhere)
        dep.emit(room, payload(4, room))
        again = come_back(node_clients, "a", dep.replica(target + 1))
        assert again["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(target + 1))}"
        assert again["sid"] == first["sid"]
        assert numbers(settle(node_clients, "a", 5)) == [0, 1, 2, 3, 4]
    finally:
        proxy.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_client_of_a_replica_that_drains_or_dies_recovers_on_another(
    node_clients: NodeClients, shared_redis: RedisServer, start_gateway: StartGateway, how: str,
) -> None:
    """SIGTERM lets clients go by closing their transport (they reconnect, elsewhere, and
    recover); SIGKILL drops them. Either way, another replica restores them."""
    prefix = uid("d")
    settings = {"KEY_PREFIX": prefix, "CHANNEL_PREFIX": f"{prefix}.io"}
    env = {**COMMON_ENV, **settings, "REDIS_URL": shared_redis.url, "DRAIN_SECONDS": "1"}
    leaving, staying = start_gateway(env), start_gateway(env)
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    with _publisher(shared_redis.url, settings) as pub:
        first = connect(node_clients, "a", leaving.ns_url, token(user, (c,)))
        pub.emit(EVENT, payload(0, rooms[0]), room=rooms[0]).result()
        node_clients.wait_events("a", EVENT, 1)
        node_clients.set_uri("a", staying.url)  # where the load balancer sends it next
        with Producer(Deployment("redis", [staying], settings, shared_redis, prefix, pub), rooms,
                      pause=0.005, start=1) as producer:
            node_clients.wait_events("a", EVENT, 5)
            if how == "sigterm":
                leaving.sigterm()
            else:
                leaving.kill()
            node_clients.wait_disconnected("a", timeout=BACK_TIMEOUT)
            back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
            assert back["type"] == "connect", back
            assert back["recovered"] is True, f"outcomes: {recovery_outcomes(staying)}"
            assert back["sid"] == first["sid"]
            count = len(node_clients.events("a", EVENT))
            node_clients.wait_events("a", EVENT, count + 10)
            published = producer.stop()
        got = numbers(settle(node_clients, "a", len(published) + 1))
        assert got == [0, *published]
    if how == "sigterm":
        assert leaving.wait_exit(10) == 0
