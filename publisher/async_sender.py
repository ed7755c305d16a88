"""Auto-pipelining for asyncio: the emits issued in one loop turn leave in one write.

Why: as for the sync sender (`publisher.sender`), Redis pays a wake-up, a round trip and a
script call per write. A web server emitting from many concurrent requests (the gateway's
`/api/emit`, an aiohttp or FastAPI app with `AsyncPublisher`) issues several emits per loop
turn under load; ioredis sends what one tick issued in one write, and so does this. No timer:
the write starts on the next loop iteration, so a lone emit waits for nothing.

One write at a time per sender, in the order emits were made: what is issued while a write is
in flight goes in the next one (batches grow with load, and a room's events keep their order).
A write that fails (after the transport's retries) fails exactly its emits' awaits; on a
cluster, only those of the calls that failed (another shard's emits were published). An emit
whose caller was cancelled before its write is not published.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from publisher.commands import Commands, Emit, Plan
from publisher.replies import outcomes
from publisher.transports import AsyncRunner

MAX_BATCH: Final = 512  # emits per write


class AsyncSender:
    """The pending emits of one asyncio publisher (or of the gateway's bus)."""

    def __init__(self, runner: AsyncRunner, commands: Commands, *, max_batch: int = MAX_BATCH) -> None:
        self._runner = runner
        self._commands = commands
        self._max_batch = max_batch
        self._pending: list[tuple[Emit, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._inflight: list[asyncio.Future[str]] = []  # the awaits of the write in flight

    async def publish(self, emit: Emit) -> str:
        """Publish one checked event with whatever else this loop turn emits; its position."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            # (A writer of another loop, closed before it finished, took its emits with it.)
            self._pending = [item for item in self._pending if item[1].get_loop() is loop]
            self._writer = loop.create_task(self._write_all())
        self._pending.append((emit, future))
        return await future

    async def _write_all(self) -> None:
        while self._pending:
            pending = self._pending
            batch = pending[:self._max_batch]
            del pending[:self._max_batch]
            live = [(emit, future) for emit, future in batch if not future.done()]
            if not live:
                continue
            emits = [emit for emit, _ in live]
            self._inflight = [future for _, future in live]
            plan: Plan = []
            try:
                plan = self._commands.publish_all(emits, by_slot=self._runner.sharded)
                replies: list[Any] | BaseException = await self._runner.run([call for call, _ in plan])
            except asyncio.CancelledError:
                for _, future in live + pending:
                    future.cancel()
                pending.clear()
                raise
            except Exception as exc:  # noqa: BLE001 - its awaits get it; the next write goes on
                replies = exc
            for (_, future), outcome in zip(live, outcomes(plan, replies, len(emits)), strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):  # its own call's failure only
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def close(self) -> None:
        """Wait for the emits made before this call: the write in flight and what is pending.
        Not for the writer to end: under load (requests that keep coming) it never would."""
        writer, loop = self._writer, asyncio.get_running_loop()
        if writer is None or writer.done() or writer.get_loop() is not loop:
            return
        waiting = [f for f in (*self._inflight, *(f for _, f in self._pending)) if f.get_loop() is loop]
        if waiting:
            await asyncio.wait(waiting)
