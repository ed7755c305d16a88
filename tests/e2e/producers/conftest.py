"""Fixtures of the producer tests: one deployment per module (two replicas, a bridge), the real
Node emitter, and the processes' logs when a test fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.producers.support import Producers
from tests.support.node_emitter import NodeEmitter
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.reports import failed


@pytest.fixture(scope="module")
def producers(shared_redis: RedisServer) -> Iterator[Producers]:
    deployment = Producers(shared_redis)
    try:
        deployment.start_replicas(2)
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def emitter(producers: Producers) -> Iterator[NodeEmitter]:
    with producers.emitter() as em:
        yield em


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest, producers: Producers) -> Iterator[None]:
    procs = [*producers.replicas, *producers.bridges]
    marks = {id(p): len(p.log_text()) for p in procs}
    yield
    if failed(request):
        for p in [*producers.replicas, *producers.bridges]:
            print(f"-- {p!r} log during the test:\n{p.log_text()[marks.get(id(p), 0):][-8000:]}")


@pytest.fixture
def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"
