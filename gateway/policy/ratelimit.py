"""Token buckets for client events: the policy here, the state on each `Conn`.

A bucket per connection would be an object per socket; the two floats it needs live in the
socket's `Conn` slots instead, and one `TokenBucket` applies the rule to all of them.
"""

from __future__ import annotations

import time
from typing import Protocol


class Bucketed(Protocol):
    tokens: float
    stamp: float


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)

    def take(self, holder: Bucketed, now: float | None = None) -> bool:
        """Spend one token of `holder`'s bucket; False when it is empty."""
        now = time.monotonic() if now is None else now
        if holder.stamp == 0.0:
            tokens = self.burst
        else:
            tokens = min(self.burst, holder.tokens + (now - holder.stamp) * self.rate)
        holder.stamp = now
        if tokens < 1.0:
            holder.tokens = tokens
            return False
        holder.tokens = tokens - 1.0
        return True


class KeyedBuckets:
    """Buckets by key (a client IP): bounded, idle keys forgotten."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.policy = TokenBucket(rate, burst)
        self.max_keys = max_keys
        self._state: dict[str, _State] = {}

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self.max_keys:
                self._forget_idle(now)
            state = self._state[key] = _State()
        return self.policy.take(state, now)

    def _forget_idle(self, now: float) -> None:
        full_after = self.policy.burst / self.policy.rate
        for key in [k for k, s in self._state.items() if now - s.stamp > full_after]:
            del self._state[key]
        if len(self._state) >= self.max_keys:  # still full: under attack from many addresses
            self._state.clear()


class _State:
    __slots__ = ("stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = 0.0
