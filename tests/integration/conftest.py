"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sio_client import NodeClients


@pytest.fixture
def clients() -> Iterator[NodeClients]:
    """The real socket.io-client, driven from Node; its stderr printed, its problems fail the test."""
    with NodeClients() as driver:
        yield driver
        print(f"-- socket.io-client driver stderr:\n{driver.stderr_text()}")
    assert not driver.problems(), driver.problems()
