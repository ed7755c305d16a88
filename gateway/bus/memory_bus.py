"""The bus of a single replica with no Redis: the same promises as Redis, in process.

`gateway --dev` and a one-replica deployment run on it, with recovery included: positions,
per-room history bounded by count and time, and sessions, exactly as the Redis bus keeps
them (so the tests of recovery run against both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from gateway.bus.contract import EVERYONE, BusSink, Position, Span, order_key
from publisher.envelope import encode_event
from publisher.session import SessionRecord

SWEEP_AFTER_ENDED = 256


class MemoryBackend:
    name = "memory"

    def __init__(self, *, history_max_len: int, window_s: float) -> None:
        self._epoch = secrets.token_hex(4)
        self._seq = 0
        self._ms = 0
        self._max_len = history_max_len
        self._window_ms = int(window_s * 1000)
        # room -> entries (ms, seq, message); and the newest (ms, seq) trimmed away
        self._history: dict[str, deque[tuple[int, int, bytes]]] = {}
        self._trimmed: dict[str, tuple[int, int]] = {}
        self._sessions: dict[str, tuple[SessionRecord, float]] = {}
        self._ended = 0  # sessions ended since the last sweep of expired ones
        self._sink: BusSink | None = None

    @property
    def connected(self) -> bool:
        return True

    async def start(self, sink: BusSink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    async def subscribe(self, room: str) -> bool:
        return True

    def unsubscribe(self, room: str) -> None:
        return None

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, envelope: bytes, room: str | None, keep: bool) -> str:
        self._seq += 1
        self._ms = max(int(time.time() * 1000), self._ms)
        pos = Position(self._epoch, self._ms, self._seq)
        message = envelope[:-1] + b',"o":"' + pos.offset.encode() + b'"}'
        if keep and self._window_ms > 0:
            self._keep(room if room is not None else EVERYONE, pos, message)
        sink = self._sink
        if sink is not None:
            # Asynchronous, as a Redis subscriber would receive it.
            asyncio.get_running_loop().call_soon(sink.on_message, message)
        return pos.offset

    def _keep(self, room: str, pos: Position, message: bytes) -> None:
        entries = self._history.get(room)
        if entries is None:
            entries = self._history[room] = deque()
        entries.append((pos.ms, pos.seq, message))
        cutoff = pos.ms - self._window_ms
        while entries and (len(entries) > self._max_len or entries[0][0] < cutoff):
            ms, seq, _ = entries.popleft()
            self._trimmed[room] = (ms, seq)

    async def publish_event(self, event: str, data: Any, room: str | None) -> str:
        envelope = encode_event(event, data, room, time.time() * 1000)
        return self._publish(envelope, room, keep=True)

    # -- positions and history ------------------------------------------------------------------

    async def position(self) -> Position:
        return Position(self._epoch, self._ms, self._seq)

    async def history(self, spans: Sequence[Span]) -> list[bytes] | None:
        out: list[tuple[int, bytes]] = []
        for room, after, until in spans:
            if after.epoch != self._epoch:
                return None
            start = (after.ms, after.seq)
            end = (until.ms, until.seq) if until is not None else None
            trimmed = self._trimmed.get(room)
            if trimmed is not None and trimmed > start:
                return None
            for ms, seq, message in self._history.get(room, ()):
                if (ms, seq) > start and (end is None or (ms, seq) <= end):
                    out.append((order_key(ms, seq), message))
        out.sort(key=lambda item: item[0])
        return [message for _, message in out]

    # -- sessions and presence ------------------------------------------------------------------

    def save_session(self, pid: str, record: SessionRecord) -> None:
        left = self._sessions[pid][0].left if pid in self._sessions else {}
        self._sessions[pid] = (dataclasses.replace(record, left=left), float("inf"))

    async def load_session(self, pid: str) -> tuple[SessionRecord, int] | None:
        entry = self._sessions.get(pid)
        if entry is None:
            return None
        record, expires = entry
        if expires < time.monotonic():
            self._sessions.pop(pid, None)
            return None
        return record, 0  # no producer reaches a bus in memory: nobody is revoked

    def drop_session(self, pid: str, user: str) -> None:
        self._sessions.pop(pid, None)

    def end_session(self, pid: str, user: str, t_ms: int) -> None:
        entry = self._sessions.get(pid)
        if entry is not None:
            self._sessions[pid] = (dataclasses.replace(entry[0], alive_ms=t_ms),
                                   time.monotonic() + self._window_ms / 1000)
        self._ended += 1
        if self._ended >= SWEEP_AFTER_ENDED:
            self._sweep(time.monotonic())

    def _sweep(self, now: float) -> None:
        """Forget sessions past their window: on Redis a TTL does it; here nobody else would,
        and a long-running single replica would keep one record per connection ever made."""
        self._ended = 0
        for pid in [pid for pid, (_, expires) in self._sessions.items() if expires < now]:
            del self._sessions[pid]

    def session_rooms(self, pid: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        entry = self._sessions.get(pid)
        if entry is None:
            return
        record, expires = entry
        joined, left = dict(record.joined), dict(record.left)
        if change == "j":
            left.pop(room, None)
            joined[room] = at or "0-0"
        else:
            joined.pop(room, None)
            if at:
                left[room] = at
        self._sessions[pid] = (dataclasses.replace(record, rooms=tuple(rooms), joined=joined, left=left), expires)

    def set_online(self, user: str, online: bool) -> None:
        return None
