"""The writes a replica does not wait for (session records, presence), sent in the background.

They are queued and sent once per event-loop turn, one `lua/writes.lua` call per slot (one call
on a single node), in the order queued, by one flush at a time. A batch the bus refused (Redis
restarting, a failover under way) is not dropped: it goes back ahead of what was queued after it
and is sent again with a growing delay, because a lost session write is a recovery that goes
wrong later (a room joined by a producer missing from the session, or one it left still in it).
Every operation of writes.lua is idempotent, so a batch that Redis ran before the connection
broke can be sent twice.

What is queued while the bus stays down is bounded (`max_queued` operations): past it the
oldest operation is dropped, counted (`writes_dropped`) and logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from gateway.bus.contract import BusUnavailable
from publisher.cluster import key_slot
from publisher.commands import Call
from publisher.scripts import Script

log = logging.getLogger("gateway.bus")

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
MAX_QUEUED = 200_000  # operations (2 to 10 strings each): tens of MB at most while Redis is away

Run = Callable[[Sequence[Call]], Awaitable[list[Any]]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class WriteQueue:
    def __init__(self, script: Script, *, run: Run, spawn: Spawn, head: Sequence[str | int],
                 routing_key: Callable[[str], str], cluster: bool, count: Callable[[str], None],
                 max_queued: int = MAX_QUEUED) -> None:
        self._script = script
        self._run = run
        self._spawn = spawn
        self._head = tuple(head)
        self._routing_key = routing_key
        self._cluster = cluster
        self._count = count
        self._max_queued = max_queued
        # slot (0 on a single node) -> queued operations; a deque, as a bus that stays away drops
        # the oldest once per operation queued (a list's pop(0) moves all 200,000 of them)
        self._writes: dict[int, deque[tuple[str, ...]]] = {}
        self._routing: dict[int, str] = {}  # slot -> a key of that slot, to route its call
        self._queued = 0
        self._scheduled = False
        self._retry_in = 0.0  # > 0 while a failed batch waits to be sent again
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False  # closing: a last flush, then no more tries
        self._lock = asyncio.Lock()

    @property
    def queued(self) -> int:
        return self._queued

    def queue(self, user: str, *operation: str) -> None:
        key = self._routing_key(user)
        slot = key_slot(key) if self._cluster else 0
        queued = self._writes.get(slot)
        if queued is None:
            queued = self._writes[slot] = deque()
            self._routing[slot] = key
        queued.append(operation)
        self._queued += 1
        if self._queued > self._max_queued:
            self._drop_oldest()
        if not self._scheduled and not self._retry_in and not self._closed:  # a pending retry carries it
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn, self.flush())

    async def flush(self) -> None:
        """Send everything queued; on failure put it back and schedule another try."""
        async with self._lock:  # one flush at a time: writes land in the order queued
            self._scheduled = False
            writes, self._writes = self._writes, {}
            routing, self._routing = self._routing, {}
            self._queued = 0
            if not writes:
                return
            calls = [Call.of(self._script, 1, routing[slot], *self._head, *(field for op in ops for field in op))
                     for slot, ops in writes.items()]
            try:
                await self._run(calls)
            except BusUnavailable as exc:
                self._put_back(writes, routing)
                self._count("writes_failed")
                if self._closed:
                    log.warning("bus write batch failed at close, not sent: %s", exc,
                                extra={"calls": len(calls), "queued": self._queued})
                    return
                self._retry_in = min(max(self._retry_in * 2, RETRY_FIRST_S), RETRY_MAX_S)
                log.warning("bus write batch failed, sent again in %.1f s: %s", self._retry_in, exc,
                            extra={"calls": len(calls), "queued": self._queued})
                self._retry = asyncio.get_running_loop().call_later(self._retry_in, self._send_again)
                return
            self._retry_in = 0.0

    def _send_again(self) -> None:
        self._retry = None
        self._spawn(self.flush())

    async def close(self) -> None:
        """A last flush of what is queued, without the retries: the bus is being closed."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        await self.flush()

    def _put_back(self, writes: dict[int, deque[tuple[str, ...]]], routing: dict[int, str]) -> None:
        """The failed batch goes back ahead of what was queued while it was being sent."""
        newer, self._writes = self._writes, {}
        for slot, ops in writes.items():
            ops.extend(newer.pop(slot, ()))
            self._writes[slot] = ops
        self._writes.update(newer)
        self._routing = {**routing, **self._routing}
        self._queued = sum(map(len, self._writes.values()))
        while self._queued > self._max_queued:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        slot = next(iter(self._writes))
        ops = self._writes[slot]
        dropped = ops.popleft()
        if not ops:
            del self._writes[slot]
            self._routing.pop(slot, None)
        self._queued -= 1
        self._count("writes_dropped")
        log.error("bus down too long: a queued %r write dropped; its session may not recover exactly",
                  dropped[0], extra={"queued": self._queued})
