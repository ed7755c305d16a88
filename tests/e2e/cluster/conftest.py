"""Fixtures of the cluster tests: a Redis Cluster (3 primaries, 3 replicas, every replica in
sync) and two gateway replicas on it for the module, a fresh cluster for a test that kills or
moves something, the replicas' and the nodes' logs on failure, a place to keep a client away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.cluster.support import CLUSTERS, STARTED, Deployment, start_deployment
from tests.support.ports import free_port
from tests.support.redis_cluster import RedisCluster
from tests.support.reports import failed

StartDeployment = Callable[..., Deployment]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """The module's cluster: tests on it add keys of their own ids and break nothing."""
    with RedisCluster() as started:
        CLUSTERS.append(started)
        yield started
        CLUSTERS.remove(started)


@pytest.fixture(scope="module")
def deployment(cluster: RedisCluster) -> Iterator[Deployment]:
    """Two replicas on the module's cluster, and a producer."""
    dep = start_deployment(cluster, name="mod")
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def fresh_cluster(request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    """A cluster of the test's own, for one that kills a node or migrates a slot; its nodes'
    logs are printed here on failure (they go with it). Parametrized indirectly, the parameter
    is extra redis-server options for every node."""
    with RedisCluster(extra=getattr(request, "param", ())) as started:
        yield started
        if failed(request):
            print(f"-- {started!r} nodes:\n{started.logs()}")


@pytest.fixture
def deploy() -> Iterator[StartDeployment]:
    """`deploy(cluster, count=2, name=..., **settings)`: replicas and a producer, stopped at the
    end of the test."""
    made: list[Deployment] = []

    def make(cluster: RedisCluster, count: int = 2, name: str = "t", **settings: str) -> Deployment:
        dep = start_deployment(cluster, count, name, **settings)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, what every replica logged during the test, and the tail of each node's log."""
    marks = {id(r): len(r.log_text()) for r in STARTED}
    yield
    if failed(request):
        for replica in STARTED:
            text = replica.log_text()[marks.get(id(replica), 0):]
            if text:
                print(f"-- {replica!r} log during the test:\n{text[-8000:]}")
        for started in CLUSTERS:
            print(f"-- {started!r} nodes:\n{started.logs()}")
    STARTED[:] = [r for r in STARTED if r.alive()]


@pytest.fixture
def nowhere() -> str:
    """A URL where nothing listens: a client pointed there stays away and keeps retrying."""
    return f"http://127.0.0.1:{free_port()}"
