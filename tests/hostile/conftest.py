"""Hostile clients (issue 5): real replicas as processes, the real socket.io-client for the
users who must keep being served, raw sockets (`rawws.py`) for the attackers.

Every test here is marked `hostile` (they run by default; `-m "not hostile"` leaves them out).
A failed test prints the replicas' logs and the socket.io-client driver's stderr.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from publisher import Publisher
from tests.support import node_env
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.reports import failed
from tests.support.sio_client import NodeClients

HOSTILE_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hostile: attackers against real replicas (issue 5); run by default")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HOSTILE_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.hostile)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return node_env.ensure_node_modules()


@pytest.fixture
def node_clients(request: pytest.FixtureRequest, node_modules: Path) -> Iterator[NodeClients]:
    with NodeClients() as clients:
        yield clients
        problems = clients.problems()
        if failed(request):
            print(f"-- socket.io-client driver stderr:\n{clients.stderr_text()}")
    assert not problems, f"the client driver reported errors: {problems}"


@pytest.fixture
def jwt_secret() -> str:
    return secrets.token_hex(32)


StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest) -> Iterator[StartGateway]:
    """`start_gateway(env)`: a ready replica; stopped by PID at the end, its log printed when
    the test failed. Every replica must still be alive at the end: a crash fails the test."""
    started: list[GatewayProcess] = []

    def start(env: Mapping[str, str], args: Sequence[str] = ()) -> GatewayProcess:
        replica = GatewayProcess(env, args=args, name=f"gateway-{len(started)}")
        started.append(replica)
        replica.start()
        replica.wait_ready(20)
        return replica

    yield start
    dead = [replica for replica in started if not replica.alive()]
    for replica in started:
        replica.sigterm()
    for replica in started:
        replica.stop()
    if failed(request) or dead:
        for replica in started:
            print(f"-- {replica!r} log:\n{replica.log_tail(200)}")
    assert not dead, f"replicas died during the test: {dead}"


@pytest.fixture
def pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher
