"""Fixtures of the operations tests: the module's replica (on the module's Redis, with a
producer configured like it), its log on failure, and a place to keep a client away.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from publisher import Publisher
from tests.e2e.operations.support import (
    BASE_ENV,
    Replica,
    uid,
)
from tests.support.gateway_proc import GatewayProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.reports import failed


@pytest.fixture(scope="module")
def replica(shared_redis: RedisServer) -> Iterator[Replica]:
    prefix = uid("op")
    env = {**BASE_ENV, "REDIS_URL": shared_redis.url, "KEY_PREFIX": prefix,
           "CHANNEL_PREFIX": f"{prefix}.io"}
    gw = GatewayProcess(env, name="ops")
    gw.start()
    pub = Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=f"{prefix}.io")
    try:
        gw.wait_ready(20)
        yield Replica(gw, pub, shared_redis)
    finally:
        pub.close()
        gw.stop()


@pytest.fixture(autouse=True)
def _replica_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, print what the module's replica logged during the test."""
    if "replica" not in request.fixturenames:
        yield
        return
    rep: Replica = request.getfixturevalue("replica")
    mark = len(rep.gw.log_text())
    yield
    if failed(request):
        print(f"-- {rep.gw!r} log during the test:\n{rep.gw.log_text()[mark:][-8000:]}")


@pytest.fixture
def nowhere() -> str:
    """A URL where nothing listens: a client pointed there stays away and keeps retrying."""
    return f"http://127.0.0.1:{free_port()}"
