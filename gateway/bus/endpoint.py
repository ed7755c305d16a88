"""Where the bus's pub/sub connection goes: a REDIS_URL turned into an address to dial.

The pub/sub listener speaks RESP itself (see `resp.py`, `shards/connection.py`), so it needs the address, TLS and
credentials rather than a redis-py client. With Sentinel, the primary is asked of the sentinels
at every (re)connection, which is how a failover is followed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from publisher.redis_url import parse_sentinel_url


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # redis, rediss, unix, redis+sentinel
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # unix socket
    username: str | None = None
    password: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def describe(self) -> str:
        """The address without credentials, for logs and error messages."""
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.service}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    parsed = urlparse(url)
    username = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError("a unix:// Redis URL needs a socket path, e.g. unix:///run/redis.sock")
        return Endpoint("unix", path=parsed.path, username=username, password=password)
    if parsed.scheme in {"redis", "rediss"}:
        return Endpoint(parsed.scheme, host=parsed.hostname or "127.0.0.1", port=parsed.port or 6379,
                        username=username, password=password, tls=parsed.scheme == "rediss")
    if parsed.scheme == "redis+sentinel":
        target = parse_sentinel_url(url)  # the publisher's parser: one grammar for the URL
        return Endpoint("redis+sentinel", username=target.username, password=target.password,
                        sentinels=target.sentinels, service=target.service_name,
                        sentinel_username=target.sentinel_username, sentinel_password=target.sentinel_password)
    raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")


async def resolve(endpoint: Endpoint) -> tuple[str, int]:
    """The primary's address: the URL's own, or the one the sentinels name now."""
    if not endpoint.sentinels:
        return endpoint.host, endpoint.port
    from redis.asyncio.sentinel import Sentinel

    auth = {"username": endpoint.sentinel_username, "password": endpoint.sentinel_password}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(endpoint.sentinels), socket_timeout=2.0, sentinel_kwargs={k: v for k, v in auth.items() if v})
    try:
        host, port = await sentinel.discover_master(endpoint.service)
    finally:
        for s in sentinel.sentinels:
            await s.aclose()
    return str(host), int(port)


def tls_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    return ssl.create_default_context() if endpoint.tls else None
