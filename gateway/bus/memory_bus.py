"""The bus of a single replica with no Redis: the same promises as Redis, in process.

`gateway --dev` and a one-replica deployment run on it, with recovery included: per-room
streams bounded by count and time with Redis's position rules (`gateway/bus/lua/history.lua`),
and sessions, exactly as the Redis bus keeps them (so the tests of recovery run against both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from gateway.bus.contract import BusSink, Entries, Span
from gateway.delivery.offsets import EMPTY_SEQ
from publisher.envelope import EVERYONE, Position, encode_event
from publisher.session import SessionRecord

SWEEP_AFTER_ENDED = 256


@dataclasses.dataclass
class _Stream:
    entries: deque[tuple[Position, bytes]] = dataclasses.field(default_factory=deque)
    last: Position | None = None  # the newest position given, kept or not
    added: int = 0
    last_write_ms: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryBackend:
    name = "memory"

    def __init__(self, *, history_max_len: int, window_s: float) -> None:
        self._max_len = history_max_len
        self._window_ms = int(window_s * 1000)
        self._lifetime_ms = 2 * self._window_ms
        self._streams: dict[str, _Stream] = {}
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

    # -- streams ----------------------------------------------------------------------------

    def _stream(self, room: str) -> _Stream | None:
        stream = self._streams.get(room)
        if stream is not None and stream.last_write_ms < _now_ms() - max(self._lifetime_ms, 1000):
            del self._streams[room]  # expired, as PEXPIRE would have it
            return None
        return stream

    async def publish_event(self, event: str, data: Any, room: str | None) -> str:
        stream_room = room if room is not None else EVERYONE
        envelope = encode_event(event, data, room, time.time() * 1000)
        stream = self._stream(stream_room)
        if stream is None:
            stream = self._streams[stream_room] = _Stream()
        now = _now_ms()
        last = stream.last
        at = Position(last.ms, last.seq + 1) if last is not None and last.ms >= now else Position(now, 0)
        stream.last = at
        stream.last_write_ms = now
        if self._window_ms > 0:
            stream.entries.append((at, envelope))
            stream.added += 1
            while len(stream.entries) > self._max_len:
                stream.entries.popleft()
        message = envelope[:-1] + b',"o":"' + str(at).encode() + b'"}'
        sink = self._sink
        if sink is not None:
            # Asynchronous, as a Redis subscriber would receive it.
            asyncio.get_running_loop().call_soon(sink.on_message, message)
        return str(at)

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        out = {}
        for room in rooms:
            stream = self._stream(room)
            if stream is not None and stream.entries:
                out[room] = stream.entries[-1][0]
            else:
                out[room] = Position(_now_ms() - 1, EMPTY_SEQ)  # "empty at now"
        return out

    async def history(self, spans: Sequence[Span]) -> dict[str, Entries | None]:
        return {room: self._replay(room, after, until) for room, after, until in spans}

    def _replay(self, room: str, after: Position, until: Position | None) -> Entries | None:
        stream = self._stream(room)
        empty_at_start = after.seq == EMPTY_SEQ
        if stream is None:
            if empty_at_start or after.ms < _now_ms() - self._lifetime_ms:
                return []
            return None
        if empty_at_start:
            if stream.added != len(stream.entries):
                return None
        elif not any(at == after for at, _ in stream.entries):
            return None
        return [(at, raw) for at, raw in stream.entries
                if at > after and (until is None or at <= until)]

    # -- sessions and presence ------------------------------------------------------------------

    def save_session(self, pid: str, record: SessionRecord) -> None:
        self._sessions[pid] = (record, float("inf"))

    async def load_session(self, user: str, pid: str) -> tuple[SessionRecord, int] | None:
        entry = self._sessions.get(pid)
        if entry is None or entry[0].user != user:
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

    def session_rooms(self, pid: str, user: str, rooms: Sequence[str], room: str, change: str, at: str) -> None:
        entry = self._sessions.get(pid)
        if entry is None:
            return
        record, expires = entry
        starts, left = dict(record.starts), dict(record.left)
        extra = [r for r in record.extra if r != room]
        if change == "j":
            left.pop(room, None)
            if at:
                starts[room] = at
            extra.append(room)
        elif at:
            left[room] = at
        self._sessions[pid] = (dataclasses.replace(record, rooms=tuple(rooms), starts=starts, left=left,
                                                   extra=tuple(extra)), expires)

    def set_online(self, user: str, online: bool) -> None:
        return None
