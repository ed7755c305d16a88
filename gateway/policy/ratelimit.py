"""Token buckets: for client events (the state on each `Conn`) and for new sessions per client
address (`KeyedBuckets`).

A bucket per connection would be an object per socket; the two floats it needs live in the
socket's `Conn` slots instead, and one `TokenBucket` applies the rule to all of them.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPV6_PREFIX = 64  # what one IPv6 subscriber gets: the addresses inside are theirs to rotate


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


def parse_ip(address: str) -> IPAddress | None:
    """The address as an IP, an IPv4-mapped IPv6 address as its IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ip_key(address: str, ip: IPAddress | None) -> str:
    """The rate-limit key of a client address, `ip` being `parse_ip(address)` (a handshake
    parses it once): an IPv4 address as it is, an IPv6 address by its /64 (one subscriber's
    prefix: keying the full address would give one host 2**64 buckets), an IPv4-mapped IPv6
    address as its IPv4. Not an IP (a Unix socket): as it is."""
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class KeyedBuckets:
    """Buckets by key (a client address, see `ip_key`), at most `max_keys` of them.

    A full table forgets its least recently used key, one per new key: O(1) per take, and a
    flood of new addresses costs the forgotten keys their history (a full bucket when they
    come back, which an idle key had anyway), never every client's at once.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.policy = TokenBucket(rate, burst)
        self.max_keys = max_keys
        self._state: OrderedDict[str, BucketState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        table = self._state
        state = table.get(key)
        if state is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
            state = table[key] = BucketState()
        else:
            table.move_to_end(key)
        return self.policy.take(state, now)


class BucketState:
    """A bucket's state for a holder that has no slots of its own (an address, a transport)."""

    __slots__ = ("stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = 0.0
