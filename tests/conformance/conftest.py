"""Engine.IO v4 conformance (issue 12, item 13): the cases of the official protocol test suite
(`eio.SUITE`), written as this project's tests, against replicas started as they run in
production: real processes, a real Redis, no `--dev`.

A replica is started per heartbeat setting and shared by the tests that use it (a module says
which with `HEARTBEAT`; the default keeps pings out of the cases' way). A failed test prints
the replica's log.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.conformance.eio import MAX_PAYLOAD, Heartbeat, Replica
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.reports import failed

# The defaults: no PING comes during a case that does not wait for one.
STEADY = Heartbeat(25_000, 20_000)


class Replicas:
    """One replica per heartbeat setting, on one Redis, started when first asked for."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.secret = secrets.token_hex(32)
        self.started: dict[Heartbeat, Replica] = {}

    def get(self, heartbeat: Heartbeat) -> Replica:
        replica = self.started.get(heartbeat)
        if replica is None:
            proc = GatewayProcess({
                "REDIS_URL": self.redis.url, "JWT_SECRET": self.secret,
                "PING_INTERVAL": str(heartbeat.interval_ms), "PING_TIMEOUT": str(heartbeat.timeout_ms),
                "MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD), "DRAIN_SECONDS": "0",
            }, name=f"gateway-{heartbeat.interval_ms}-{heartbeat.timeout_ms}")
            try:
                proc.start().wait_ready(20)
            except BaseException:
                proc.stop()
                raise
            replica = self.started[heartbeat] = Replica(proc, self.secret, heartbeat)
        return replica

    def stop(self) -> None:
        for replica in self.started.values():
            replica.proc.sigterm()
        for replica in self.started.values():
            replica.proc.stop()


@pytest.fixture(scope="package")
def replicas() -> Iterator[Replicas]:
    redis = RedisServer().start()
    started = Replicas(redis)
    try:
        yield started
    finally:
        started.stop()
        redis.stop()


@pytest.fixture
def replica(request: pytest.FixtureRequest, replicas: Replicas) -> Iterator[Replica]:
    """The replica of this module's `HEARTBEAT` (default `STEADY`); it must outlive the test."""
    chosen = replicas.get(getattr(request.module, "HEARTBEAT", STEADY))
    yield chosen
    if failed(request) or not chosen.proc.alive():
        print(f"-- {chosen.proc!r} log:\n{chosen.proc.log_tail(200)}")
    assert chosen.proc.alive(), f"the replica died during the test: {chosen.proc!r}"
