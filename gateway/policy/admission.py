"""Who may open a connection: per-IP handshake rate, per-user socket count, draining, and
connections that never finish their Socket.IO handshake.

Refusals happen before python-engineio allocates anything for the request.
"""

from __future__ import annotations

import ipaddress
import time

from aiohttp import web

from gateway.config import Settings
from gateway.policy.ratelimit import KeyedBuckets


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
        self.draining = False

    def client_ip(self, request: web.BaseRequest) -> str:
        """The client's address: X-Forwarded-For is believed only from a trusted proxy, and
        only up to the first address that is not itself a trusted proxy."""
        remote = request.remote or ""
        if not self._is_trusted(remote):
            return remote
        forwarded = request.headers.get("X-Forwarded-For", "")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._is_trusted(hop):
                return hop
        return remote

    def _is_trusted(self, address: str) -> bool:
        return _within(address, self._trusted)

    def check_request(self, request: web.BaseRequest) -> web.Response | None:
        """A refusal for a request that would open a new Engine.IO session, else None."""
        if "sid" in request.query:  # a request of an existing session (python-engineio checks it)
            return None
        if self.draining:
            self._metrics.handshake("draining")  # type: ignore[attr-defined]
            return web.json_response({"error": "draining"}, status=503, headers={"Retry-After": "1"})
        ip = self.client_ip(request)
        if not _within(ip, self._exempt) and not self._ips.take(ip):
            self._metrics.handshake("ip_rate_limited")  # type: ignore[attr-defined]
            return web.json_response({"error": "too_many_connections_from_address"}, status=429,
                                     headers={"Retry-After": "1"})
        return None

    def user_may_connect(self, user_id: str, current: int) -> bool:
        """Room for one more socket of this user? Counts the handshakes of that user still under
        way (a CONNECT awaits Redis before its socket is registered); `connect_done` ends one."""
        pending = self._connecting.get(user_id, 0)
        if current + pending >= self._max_per_user:
            return False
        self._connecting[user_id] = pending + 1
        return True

    def connect_done(self, user_id: str) -> None:
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


def _within(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
