"""End-to-end fixtures: the real socket.io-client (a Node process per test) and gateway
replicas as real processes, all stopped by PID in teardown. Every test here is marked `e2e`."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support import node_env
from tests.support.gateway_proc import GatewayProcess
from tests.support.reports import failed
from tests.support.sio_client import NodeClients

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Called with the whole session's items, whichever conftest holds it: mark ours only.
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def ensure_node_modules() -> Path:
    """tests/e2e/driver/node_modules, installed from the lock file when missing or stale."""
    return node_env.ensure_node_modules()


@pytest.fixture
def node_clients(
    request: pytest.FixtureRequest, ensure_node_modules: Path
) -> Iterator[NodeClients]:
    """One driver process holding this test's sockets; its stderr is printed when the test
    fails, and errors it reported about itself fail the test."""
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
    """`start_gateway(env, port=None, args=(), ready=True)`: a replica, ready unless told not to
    wait. All are SIGTERMed together, then stopped by PID; their logs are printed on failure."""
    started: list[GatewayProcess] = []

    def start(
        env: Mapping[str, str], port: int | None = None, args: Sequence[str] = (),
        *, ready: bool = True, ready_timeout: float = 15.0,
    ) -> GatewayProcess:
        replica = GatewayProcess(env, port=port, args=args, name=f"gateway-{len(started)}")
        started.append(replica)
        replica.start()
        if ready:
            replica.wait_ready(ready_timeout)
        return replica

    yield start
    for replica in started:
        replica.sigterm()
    for replica in started:
        replica.stop()
    if failed(request):
        for replica in started:
            print(f"-- {replica!r} log:\n{replica.log_tail(200)}")
