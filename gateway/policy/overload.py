"""When to shed new connections because the replica itself is overloaded: a reconnect storm
bigger than it can take at once (a replica of many sockets died and its clients all came here
within a second or two).

Why shed at all. The event loop accepts whatever arrives, and every handshake under way then
advances one step per loop turn. Once more work is queued than the replica does in
socket.io-client's connect `timeout` (20 s), every client's attempt times out before its
Engine.IO OPEN arrives, the work done for it is wasted, the client tries again, and the replica
stays at 100 % CPU while nobody gets in: a collapse that outlasts the storm. Refused early, with
a 503 and `Retry-After`, a handshake costs the replica a few tens of microseconds; its client
comes back after its backoff (1 to 5 s, randomised), and the handshakes that were admitted finish
in time. Nobody is refused for good: the per-IP limit and this are both retried by the client.

Two signals, both about work the replica owns. Never a count of open but idle sessions: an
attacker could pile those up for free (each is closed after HANDSHAKE_TIMEOUT anyway).
- Event-loop lag: how late a timer callback due `PROBE_EVERY` s after it was armed runs, or how
  overdue the pending one is already. It is the delay every step of every handshake is seeing
  right now.
- Socket.IO CONNECTs in flight: from the CONNECT's arrival to its answer (the token check and,
  for a recovery, the Redis reads). Bounds what a slow Redis lets accumulate.
"""

from __future__ import annotations

import asyncio

PROBE_EVERY = 0.1  # seconds from a probe's arming to its due time: lag shows within this


class LoopLag:
    """The running event loop's lag, measured by a timer callback armed when the question is
    asked: while handshakes arrive (a storm) a probe is always pending and the answer is at most
    `every` s old; an idle replica runs no timer at all."""

    def __init__(self, every: float = PROBE_EVERY) -> None:
        self._every = every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: float | None = None  # the pending probe's due time
        self._last = 0.0  # the last probe's delay...
        self._last_at = float("-inf")  # ...measured then (loop time)

    def seconds(self) -> float:
        """How far behind the loop runs now (0.0 outside a running loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return 0.0
            self._due = None
        now = loop.time()
        recent = self._last if now - self._last_at <= 2 * self._every else 0.0
        if self._due is None:
            self._due = now + self._every
            loop.call_at(self._due, self._tick)
            return recent
        return max(recent, now - self._due)

    def _tick(self) -> None:
        loop, due = self._loop, self._due
        if loop is None or due is None:
            return
        self._last_at = loop.time()
        self._last = max(0.0, self._last_at - due)
        self._due = None


class Overload:
    """Whether a new connection should be shed now, and why (a metric label), or None."""

    def __init__(self, max_lag: float, max_connects: int, lag: LoopLag | None = None) -> None:
        self.max_lag = max_lag  # 0: off
        self.max_connects = max_connects  # 0: off
        self.lag = lag or LoopLag()
        self.connects = 0

    def connect_started(self) -> None:
        self.connects += 1

    def connect_finished(self) -> None:
        self.connects = max(0, self.connects - 1)

    def reason(self) -> str | None:
        if self.max_connects and self.connects >= self.max_connects:
            return "overloaded_connects"
        if self.max_lag and self.lag.seconds() >= self.max_lag:
            return "overloaded_lag"
        return None
