"""The replica's background writes (session records, presence) survive a bus that refuses them
for a while: sent again, in order, ahead of newer writes; bounded while the bus stays away."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from gateway.bus import write_queue
from gateway.bus.contract import BusUnavailable
from gateway.bus.write_queue import WriteQueue
from publisher.cluster import key_slot
from publisher.commands import Call
from publisher.scripts import Script

SCRIPT = Script.load("writes.lua", "gateway.bus")


class Bus:
    """Runs calls or refuses them, and keeps what it ran."""

    def __init__(self) -> None:
        self.down = False
        self.ran: list[list[str]] = []  # per call: the operations after the head, as strings
        self.refused = 0

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        await asyncio.sleep(0)
        if self.down:
            self.refused += 1
            raise BusUnavailable("connection refused")
        for call in calls:
            self.ran.append([str(a) for a in call.args[2:]])
        return [1] * len(calls)


def make(bus: Bus, *, cluster: bool = False, max_queued: int = 1000) -> tuple[WriteQueue, list[str]]:
    counted: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    queue = WriteQueue(SCRIPT, run=bus.run, spawn=spawn, head=("h",), routing_key=lambda u: f"p:{{user:{u}}}:sessions",
                       cluster=cluster, count=counted.append, max_queued=max_queued)
    return queue, counted


async def settle(queue: WriteQueue, bus: Bus) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not queue.queued and not bus.down:
            await asyncio.sleep(0.02)
            return
    raise AssertionError(f"{queue.queued} writes still queued")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_queue, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(write_queue, "RETRY_MAX_S", 0.02)


async def test_one_call_per_loop_turn_in_the_order_queued() -> None:
    bus = Bus()
    queue, _ = make(bus)
    queue.queue("1", "O", "1")
    queue.queue("2", "A", "p", "2", "5")
    await settle(queue, bus)
    assert bus.ran == [["h", "O", "1", "A", "p", "2", "5"]]


async def test_a_refused_batch_is_sent_again_ahead_of_newer_writes() -> None:
    bus = Bus()
    queue, counted = make(bus)
    bus.down = True
    queue.queue("1", "S", "p1", "1")
    await asyncio.sleep(0.005)  # refused once
    queue.queue("1", "R", "p1", "1", "j")
    queue.queue("1", "E", "p1", "1", "9")
    await asyncio.sleep(0.05)
    assert bus.refused >= 2
    assert bus.ran == []
    bus.down = False
    await settle(queue, bus)
    flat = [op for call in bus.ran for op in call if op != "h"]
    assert flat == ["S", "p1", "1", "R", "p1", "1", "j", "E", "p1", "1", "9"], "nothing lost, order kept"
    assert "writes_failed" in counted
    assert "writes_dropped" not in counted


async def test_slots_are_called_apart_on_a_cluster() -> None:
    bus = Bus()
    queue, _ = make(bus, cluster=True)
    users = ["1", "2", "3"]
    assert len({key_slot(f"p:{{user:{u}}}:sessions") for u in users}) == 3
    for u in users:
        queue.queue(u, "O", u)
    await settle(queue, bus)
    assert sorted(bus.ran) == [["h", "O", u] for u in users]


async def test_while_the_bus_stays_away_the_oldest_writes_go_first_and_are_counted() -> None:
    bus = Bus()
    queue, counted = make(bus, max_queued=3)
    bus.down = True
    for n in range(5):
        queue.queue("1", "O", str(n))
    assert queue.queued == 3
    assert counted.count("writes_dropped") == 2
    bus.down = False
    await settle(queue, bus)
    assert [op for call in bus.ran for op in call if op not in ("h", "O")] == ["2", "3", "4"]


async def test_closing_makes_a_last_try_and_no_retry_after_it() -> None:
    bus = Bus()
    queue, _ = make(bus)
    bus.down = True
    queue.queue("1", "O", "1")
    await asyncio.sleep(0.005)  # refused once: a retry is scheduled
    await queue.close()
    refused = bus.refused
    queue.queue("1", "F", "1")
    await asyncio.sleep(0.1)  # several retry delays
    assert bus.refused == refused, "nothing sent after close"
    bus.down = False
    await asyncio.sleep(0.05)
    assert bus.ran == []
