"""A reconnect storm with admission on: a replica holding everyone is killed (SIGKILL, as a
crash or an OOM kill) while events flow, and every client reconnects to the other replica at
once, with socket.io-client's own backoff and recovery.

Loopback is not exempt here, and the clients come from several 127.0.0.x addresses (Linux
routes all of 127/8 to lo), each a "client host" with its own per-IP bucket, as behind a load
balancer, with more clients per address than the bucket's burst: part of the storm is refused
(429) and must come back by itself. The storm must be neither refused wholesale nor leave a
client unrecovered or short of an event. bench/run.py --scenario storm measures the same at
scale (docs/operations.md, "Connections at scale").
"""

from __future__ import annotations

from publisher import Publisher
from tests.e2e.operations.support import Producer
from tests.hostile.conftest import StartGateway
from tests.hostile.support import (
    EVENT,
    assert_all_received,
    base_env,
    log_problems,
    metric,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

ADDRESSES = [f"127.0.0.{x}" for x in range(2, 6)]
PER_ADDRESS = 12  # more than the burst below: some of each address's reconnections are refused
# The per-IP limit on, loopback not exempt (TEST-NET-1 is nobody here), burst 5 x 2 = 10.
ADMISSION_ON = {"HANDSHAKE_RATE_EXEMPT": "192.0.2.0/32", "HANDSHAKE_RATE_PER_IP": "2"}
BACK_WITHIN = 60.0  # bounds the wait only: refused clients retry after 1, 2, 4, 5, 5 ... s


def test_a_storm_of_recovering_clients_from_several_addresses_is_admitted_and_loses_nothing(
    start_gateway: StartGateway, shared_redis: RedisServer, jwt_secret: str, node_clients: NodeClients,
    pub: Publisher,
) -> None:
    env = base_env(jwt_secret, REDIS_URL=shared_redis.url, **ADMISSION_ON)
    doomed = GatewayProcess(env, name="doomed")
    doomed.start()
    try:
        doomed.wait_ready(20)
        survivor = start_gateway(env)
        names = {f"c{a}-{k}": (address, uid("storm")) for a, address in enumerate(ADDRESSES)
                 for k in range(PER_ADDRESS)}
        for name, (address, user) in names.items():
            node_clients.connect(name, doomed.ns_url, token=token(jwt_secret, user),
                                 transports=["websocket"], localAddress=address)
        for name in names:  # 12 per address against a burst of 10: a few retried, all in
            first = node_clients.wait_connected(name, timeout=BACK_WITHIN)
            assert first["type"] == "connect", first
        assert metric(doomed, "ws_handshakes_total", outcome="ip_rate_limited") >= 1, \
            "admission was not on: no address was ever limited"

        # numbered events to each user in turn, until every client is back
        with Producer(pub, [f"user:{user}" for _, user in names.values()], pause=0.003) as feeder:
            for name in names:  # their next Engine.IO connection goes to the survivor
                node_clients.set_uri(name, survivor.url)
            assert_some_events_arrived(node_clients, names)
            doomed.kill()
            outcomes = {name: node_clients.wait_connected(name, timeout=BACK_WITHIN) for name in names}

        not_back = {n: r for n, r in outcomes.items() if r["type"] != "connect"}
        assert not not_back, f"{len(not_back)} of {len(names)} clients did not come back: {not_back}"
        unrecovered = sorted(n for n, r in outcomes.items() if not r.get("recovered"))
        assert not unrecovered, f"{len(unrecovered)} of {len(names)} clients came back unrecovered"
        for name, (_, user) in names.items():  # once each, in order, none missing
            assert_all_received(node_clients, name, feeder.for_rooms({f"user:{user}"}), timeout=BACK_WITHIN)
        refused = metric(survivor, "ws_handshakes_total", outcome="ip_rate_limited")
        assert refused >= 1, "the storm never met the per-IP limit: the test proves nothing about admission"
        assert metric(survivor, "ws_handshakes_total", outcome="recovered") == len(names)
        assert log_problems(survivor) == []
    finally:
        doomed.stop()


def assert_some_events_arrived(clients: NodeClients, names: dict[str, tuple[str, str]]) -> None:
    """Every client got an event on the doomed replica: it has an offset to recover from."""
    for name in names:
        clients.wait_events(name, EVENT, 1, timeout=20)
