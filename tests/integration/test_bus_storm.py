"""A reconnect storm asks the bus for hundreds of recoverable sessions at once (every client
that a dead replica held reconnects within about a second): the bus must queue those calls,
not fail them. redis-py's asyncio pool refuses a call past its 100 connections ("Too many
connections") instead of waiting, and each refusal would cost a client its recovery
(`recovered: false`, and the events it missed). Found by `bench/run.py --scenario storm`.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.bus.redis_bus import RedisBackend
from gateway.metrics import Metrics
from publisher.envelope import BusNames
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

AT_ONCE = 400  # four times redis-py's pool


def test_hundreds_of_session_reads_at_once_are_queued_not_refused(redis_server: RedisServer) -> None:
    async def storm() -> list[object]:
        backend = RedisBackend(redis_server.url, names=BusNames("socket.io", f"t{uuid.uuid4().hex[:8]}"),
                               replica_id="storm", history_max_len=100, window_s=120,
                               max_payload_bytes=65536, metrics=Metrics())
        try:
            return await asyncio.gather(*(backend.load_session(f"u{i}", f"pid{i}") for i in range(AT_ONCE)),
                                        return_exceptions=True)
        finally:
            await backend.close()

    results = asyncio.run(storm())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of {AT_ONCE} session reads failed, e.g. {failures[0]!r}"
    assert results == [None] * AT_ONCE  # no such sessions: each read answered "not found"
