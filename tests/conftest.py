"""Fixtures shared by every test layer. Processes are started per test or per module and
stopped by PID; nothing depends on the machine's own Redis."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.support.redis_server import RedisServer
from tests.support.reports import REPORTS


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item, so fixtures can tell in teardown whether it failed.
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for a module whose tests use unique key prefixes."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
