"""Small helpers every process-level test uses: unique ids, bounded polling, /metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway_proc import GatewayProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def uid(prefix: str = "u") -> str:
    """An id no other test uses: tests share Redis servers and replicas."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def wait_until(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `probe` until it returns something truthy; fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")
        time.sleep(every)


def scrape(gw: GatewayProcess) -> Samples:
    """Every sample of the replica's /metrics, by (name, sorted labels)."""
    status, body = gw.http_get("/metrics")
    assert status == 200, body
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
