"""A plain redis://host:port URL pointed at a node of a Redis Cluster (primary or replica): the
replica refuses to start, saying to write redis+cluster://; it is never ready (and so never
ready and deaf, as a v1 replica was). A producer with such a URL is refused the same way.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from publisher import Publisher
from publisher.cluster import ClusterModeError
from tests.e2e.cluster.support import COMMON_ENV, EVENT, STARTED, payload, uid
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_cluster import RedisCluster

REFUSED_WITHIN = 30.0


@pytest.mark.parametrize("node", ["primary", "replica"])
def test_a_replica_given_a_plain_url_at_a_cluster_node_refuses_to_start(
    cluster: RedisCluster, node: str,
) -> None:
    primary = cluster.primary_ports()[0]
    port = primary if node == "primary" else cluster.replicas_of(primary)[0]
    gw = GatewayProcess({**COMMON_ENV, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}, name=f"plain-{node}")
    STARTED.append(gw)
    answers: list[int] = []
    try:
        gw.start()
        deadline = time.monotonic() + REFUSED_WITHIN
        while gw.alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                answers.append(gw.http_get("/readyz", timeout=1.0)[0])
            time.sleep(0.05)
        assert not gw.alive(), (f"still running after {REFUSED_WITHIN} s (/readyz said "
                                f"{sorted(set(answers))}):\n{gw.log_tail()}")
        assert gw.returncode != 0, gw.log_tail()
        assert 200 not in answers, f"ready at some point: {answers}\n{gw.log_tail()}"
        log = gw.log_text()
        assert "redis+cluster://" in log, log
        assert "Traceback" not in log, log
    finally:
        gw.stop()


def test_a_producer_given_a_plain_url_at_a_cluster_node_is_refused(cluster: RedisCluster) -> None:
    port = cluster.primary_ports()[1]
    with Publisher(f"redis://127.0.0.1:{port}/0") as pub, \
            pytest.raises(ClusterModeError, match=r"redis\+cluster://"):
        pub.emit(EVENT, payload(0, "x"), user=uid()).result()
