"""Fixtures of the recovery tests: the module's deployments, their logs on failure, and a
place to keep a client away.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.recovery.support import Deployments
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.reports import failed


@pytest.fixture(scope="module")
def deployments(shared_redis: RedisServer) -> Iterator[Deployments]:
    pool = Deployments(shared_redis)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(autouse=True)
def _replica_logs(request: pytest.FixtureRequest, deployments: Deployments) -> Iterator[None]:
    """On failure, print what every replica of the module logged during this test."""
    marks = {id(r): len(r.log_text()) for d in deployments.started.values() for r in d.replicas}
    yield
    if failed(request):
        for d in deployments.started.values():
            for r in d.replicas:
                text = r.log_text()[marks.get(id(r), 0):]
                print(f"-- {r!r} log during the test:\n{text[-8000:]}")


@pytest.fixture
def nowhere() -> str:
    """A URL where nothing listens: a client pointed there stays away and keeps retrying."""
    return f"http://127.0.0.1:{free_port()}"
