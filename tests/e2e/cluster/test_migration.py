"""A busy room's slot migrated to another primary while a producer emits to it without pause
(CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE of its keys, SETSLOT NODE; the producer kept
publishing at each step): the sockets connected throughout get every event once, in order, on
both replicas; a client that dropped before the migration and comes back after it is recovered
exactly, or told `recovered: false`, never given a short replay.
"""

from __future__ import annotations

import pytest

from tests.e2e.cluster.conftest import StartDeployment
from tests.e2e.cluster.support import (
    BACK_TIMEOUT,
    EVENT,
    Producer,
    assert_never_short,
    by_room,
    come_back,
    connect,
    explain,
    go_away,
    one_per_shard,
    recovery_outcomes,
    token,
    wait_published,
    wait_settled,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.sio_client import NodeClients

pytestmark = pytest.mark.timeout(300)

MEMBERS = {"m0": (0, "websocket"), "m1": (1, "websocket"), "m2": (1, "polling")}


def test_a_busy_rooms_slot_migrated_mid_stream_loses_nothing(
    node_clients: NodeClients, fresh_cluster: RedisCluster, deploy: StartDeployment, nowhere: str,
) -> None:
    cluster = fresh_cluster
    dep = deploy(cluster, name="migrate")
    pub = dep.publisher
    assert pub is not None
    [(source, (classroom, room))] = list(one_per_shard(cluster, lambda c: f"classroom:{c}", "c").items())[:1]
    target = next(p for p in cluster.primary_ports() if p != source)
    slot = cluster.slot("{" + room + "}")
    history = f"{dep.key_prefix}:{{{room}}}:h"
    for name, (i, transport) in MEMBERS.items():
        connect(node_clients, name, dep.replica(i).ns_url, token(f"{name}-{classroom}", (classroom,)), transport)
    first = connect(node_clients, "dropper", dep.replica(0).ns_url, token(f"d-{classroom}", (classroom,)))
    steps: list[str] = []

    def keep_publishing(step: str) -> None:
        steps.append(step)
        wait_published(producer, 5)

    with Producer(pub, [room], pause=0.003) as producer:
        wait_published(producer, 20)
        node_clients.wait_events("dropper", EVENT, 5, timeout=BACK_TIMEOUT)
        go_away(node_clients, "dropper", nowhere)
        wait_published(producer, 10)
        cluster.migrate_slot(slot, target, on_step=keep_publishing)
        assert cluster.primary_for(history) == target
        wait_published(producer, 20)
        back = come_back(node_clients, "dropper", dep.replica(1))
        assert back["type"] == "connect", back
        wait_published(producer, 20)
        published = producer.stop()

    assert steps[:2] == ["importing", "migrating"], steps
    moved = cluster.client(target)
    try:
        assert moved.exists(history) == 1, "the room's history moved with its slot"
    finally:
        moved.close()
    expected = [n for n, _ in published]
    for name in MEMBERS:
        got = by_room(wait_settled(node_clients, name, len(expected), timeout=BACK_TIMEOUT))
        assert got == {room: expected}, explain(node_clients, name, expected)
        drops = [r for r in node_clients.log(name) if r["type"] == "disconnect"]
        print(f"{name}: dropped {len(drops)} times during the migration: {drops}")

    node_clients.wait_events("dropper", EVENT, 1, timeout=BACK_TIMEOUT)
    wait_settled(node_clients, "dropper", 1)
    seen = assert_never_short(node_clients, "dropper", {room: expected})
    print(f"dropper: recovered {back['recovered']} (sid kept: {back['sid'] == first['sid']}), "
          f"connects {seen['connects']}; outcomes: {recovery_outcomes(dep.replica(1))}")
    if back["recovered"]:
        assert by_room(node_clients.events("dropper", EVENT)) == {room: expected}, (
            explain(node_clients, "dropper", expected))
