"""The bridge on a Redis Cluster (REDIS_URL=redis+cluster://...): the real Node emitter,
connected to one node, publishes on classic pub/sub (which a cluster spreads to every node);
the bridge, subscribed through another node, puts the events and room controls on the rooms'
own shards; the real socket.io-client gets each once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster.support import EVENT, Deployment, connect, one_per_shard, quiet, rooms_of, token
from tests.e2e.producers.support import active, bridge_command, wait_for
from tests.support.gateway_proc import GatewayProcess
from tests.support.node_emitter import NodeEmitter
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients


@pytest.fixture(scope="module")
def bridge(cluster: RedisCluster, deployment: Deployment) -> Iterator[GatewayProcess]:
    proc = GatewayProcess({}, command=bridge_command(), name="cluster-bridge")
    proc.env.update({"REDIS_URL": cluster.url(), "BRIDGE_PORT": str(proc.port), "BRIDGE_HOST": "127.0.0.1",
                     "KEY_PREFIX": deployment.settings["KEY_PREFIX"],
                     "CHANNEL_PREFIX": deployment.settings["CHANNEL_PREFIX"]})
    proc.start()
    try:
        proc.wait_ready(30)
        wait_for(lambda: active(proc), "the bridge holds the lease")
        yield proc
    finally:
        if proc.alive():
            proc.sigterm()
        proc.stop()
        print(f"-- bridge log:\n{proc.log_tail(60)}")


def test_emitter_events_and_room_controls_across_shards(
        node_clients: NodeClients, cluster: RedisCluster, deployment: Deployment, bridge: GatewayProcess) -> None:
    users = [ident for ident, _ in one_per_shard(cluster, lambda u: f"user:{u}").values()]
    classes = [ident for ident, _ in one_per_shard(cluster, lambda c: f"classroom:{c}", "c").values()]
    quiz = f"quiz:{users[0]}"
    # every user in every classroom: an event to all of them is one copy per shard
    for n, user in enumerate(users):
        connect(node_clients, user, deployment.replica(n).ns_url, token(user, tuple(classes)))
    last = cluster.primary_ports()[-1]
    with NodeEmitter(f"redis://127.0.0.1:{last}/0", "socket.io") as emitter:
        emitter.emit(EVENT, {"n": 1}, to=[f"classroom:{c}" for c in classes], except_=[f"user:{users[-1]}"])
        emitter.sockets_join([quiz], to=[f"classroom:{classes[0]}"])
        wait_for(lambda: all(quiz in rooms_of(node_clients, u) for u in users), "every socket joins the quiz")
        emitter.emit(EVENT, {"n": 2}, to=[quiz])
    for user in users[:-1]:
        node_clients.wait_events(user, EVENT, 2)
        assert sorted(e.payload["n"] for e in quiet(node_clients, user)) == [1, 2]
    node_clients.wait_events(users[-1], EVENT, 1)
    assert [e.payload["n"] for e in quiet(node_clients, users[-1])] == [2]
