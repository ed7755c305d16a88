"""Fixtures of the core contract tests: the module's replica and its log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.contract.support import BASE_ENV
from tests.support.gateway_proc import GatewayProcess


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    """One replica for the module: in-memory bus, a publish key, two allowed origins."""
    replica = GatewayProcess(BASE_ENV, name="core")
    try:
        replica.start().wait_ready()
        yield replica
    finally:
        replica.stop()


@pytest.fixture(autouse=True)
def shared_log(gw: GatewayProcess) -> Iterator[None]:
    """Show the shared replica's log lines of the test when it fails (pytest prints captured
    output only for failures)."""
    seen = len(gw.log_text())
    yield
    print(f"-- shared replica log during the test:\n{gw.log_text()[seen:][-20000:]}")
