"""Who may open a connection: per-address handshake rate, per-user socket count, draining,
overload (`gateway.policy.overload`: a reconnect storm bigger than the replica can take), and
connections that never finish their Socket.IO handshake.

Pure policy, no I/O: a request is read through `RequestView` (what aiohttp's request offers),
and a refusal is a `Refusal` value that the HTTP layer turns into its response. Refusals happen
before python-engineio allocates anything for the request.

The client address is the socket's peer, or, when that peer is in TRUSTED_PROXIES, the last
X-Forwarded-For hop that is not itself a trusted proxy (what the outermost proxy appended;
whatever the client wrote before it is not believed). HANDSHAKE_RATE_EXEMPT applies to the
socket peer only, never to an address read from X-Forwarded-For: the exemption is for local
probes and sidecars, which connect directly, and a header is only as honest as every pod
that can reach the replica (in a cluster that trusts a pod range, any of them could claim
127.0.0.1). A forwarded client is always rate limited, by its address or its IPv6 /64.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import MultiMapping

from gateway.config import Settings
from gateway.policy.overload import Overload
from gateway.policy.ratelimit import IPAddress, KeyedBuckets, ip_key, parse_ip

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class RequestView(Protocol):
    """The parts of an HTTP request admission reads (an aiohttp request is one)."""

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def remote(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused: HTTP `status`, the JSON body `{"error": code}`, and the
    `Retry-After` seconds (None: no header)."""

    status: int
    code: str
    retry_after: int | None = 1

    def body(self) -> dict[str, str]:
        return {"error": self.code}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


DRAINING = Refusal(503, "draining")
IP_RATE_LIMITED = Refusal(429, "too_many_connections_from_address")
# socket.io-client treats any refused handshake as a failed attempt and retries after its backoff
OVERLOADED = Refusal(503, "overloaded")


class Admission:
    def __init__(self, settings: Settings, metrics: object) -> None:
        rate = settings.handshake_rate_per_ip
        self._ips = KeyedBuckets(rate, max(1, int(rate * 5)))
        self._trusted = settings.trusted_proxies
        self._exempt = settings.handshake_rate_exempt
        self._max_per_user = settings.max_connections_per_user
        self._handshake_timeout = settings.handshake_timeout
        self._pending: dict[str, float] = {}
        self._connecting: dict[str, int] = {}
        self._metrics = metrics
        self.overload = Overload(settings.handshake_shed_lag, settings.max_connects_in_flight)
        self.draining = False

    def client_address(self, request: RequestView) -> tuple[str, bool]:
        """(the client's address, whether it was read from X-Forwarded-For).

        X-Forwarded-For is believed only from a trusted proxy, and only up to the first hop
        (from the right) that is not itself a trusted proxy. When every hop is a trusted
        proxy, the leftmost one is the client."""
        remote = request.remote or ""
        if not self._is_trusted(remote):
            return remote, False
        hops = [h.strip() for h in _forwarded_for(request.headers).split(",") if h.strip()]
        if not hops:
            return remote, False
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop, True
        return hops[0], True

    def _is_trusted(self, address: str) -> bool:
        return _within(address, self._trusted)

    def refusal(self, request: RequestView) -> Refusal | None:
        """Why a request that would open a new Engine.IO session is refused, or None."""
        if "sid" in request.query:  # a request of an existing session (python-engineio checks it)
            return None
        if self.draining:
            self._metrics.handshake("draining")  # type: ignore[attr-defined]
            return DRAINING
        # Before the per-IP bucket: a shed handshake spends none of its address's tokens. For
        # exempt addresses too: this protects the replica, not other clients.
        overloaded = self.overload.reason()
        if overloaded is not None:
            self._metrics.handshake(overloaded)  # type: ignore[attr-defined]
            return OVERLOADED
        address, forwarded = self.client_address(request)
        ip = parse_ip(address)  # once per handshake: the exemption and the bucket's key both need it
        if not forwarded and _ip_within(ip, self._exempt):
            return None
        if not self._ips.take(ip_key(address, ip)):
            self._metrics.handshake("ip_rate_limited")  # type: ignore[attr-defined]
            return IP_RATE_LIMITED
        return None

    def user_may_connect(self, user_id: str, current: int) -> bool:
        """Room for one more socket of this user? Counts the handshakes of that user still under
        way (a CONNECT awaits Redis before its socket is registered); `connect_done` ends one."""
        pending = self._connecting.get(user_id, 0)
        if current + pending >= self._max_per_user:
            return False
        self._connecting[user_id] = pending + 1
        self.overload.connect_started()
        return True

    def connect_done(self, user_id: str) -> None:
        self.overload.connect_finished()
        left = self._connecting.get(user_id, 0) - 1
        if left > 0:
            self._connecting[user_id] = left
        else:
            self._connecting.pop(user_id, None)

    def handshake_started(self, eio_sid: str) -> None:
        self._pending[eio_sid] = time.monotonic() + self._handshake_timeout

    def handshake_done(self, eio_sid: str) -> None:
        self._pending.pop(eio_sid, None)

    def stale_handshakes(self, now: float) -> list[str]:
        stale = [sid for sid, deadline in self._pending.items() if deadline <= now]
        for sid in stale:
            del self._pending[sid]
        return stale


def _forwarded_for(headers: Mapping[str, str]) -> str:
    """Every X-Forwarded-For line, joined (RFC 9110: repeated lines are one list). aiohttp's
    `get` gives the first line only: the client's own, when a proxy adds a line of its own
    behind it (HAProxy does), and the client would pick its rate-limit bucket. The native
    path's headers (gateway/ws/head.py) are joined already."""
    if isinstance(headers, MultiMapping):
        return ", ".join(headers.getall("X-Forwarded-For", ()))
    return headers.get("X-Forwarded-For", "")


def _within(address: str, networks: Networks) -> bool:
    # no networks (TRUSTED_PROXIES unset, the common case): nothing to parse
    return bool(networks) and _ip_within(parse_ip(address), networks)


def _ip_within(ip: IPAddress | None, networks: Networks) -> bool:
    """`ip` (from `parse_ip`: ::ffff:127.0.0.1 from a dual-stack socket is 127.0.0.1) in any of them."""
    return ip is not None and any(ip in net for net in networks)
