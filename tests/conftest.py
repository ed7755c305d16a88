"""Fixtures shared by every test layer. Processes are started per test or per module and
stopped by PID; nothing depends on the machine's own Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


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
