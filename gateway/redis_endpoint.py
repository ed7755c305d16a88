"""Where the bus's pub/sub connection goes: a REDIS_URL turned into an address to dial.

The pub/sub listener speaks RESP itself (see `subscriber.py`), so it needs the address, TLS and
credentials rather than a redis-py client. With Sentinel, the primary is asked of the sentinels
at every (re)connection, which is how a failover is followed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse


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
        netloc = parsed.netloc.rsplit("@", 1)[-1]
        sentinels = []
        for part in netloc.split(","):
            host, _, port = part.partition(":")
            sentinels.append((host, int(port or 26379)))
        segments = [s for s in parsed.path.split("/") if s]
        service = segments[1] if len(segments) > 1 else (parse_qs(parsed.query).get("service", [""])[0])
        if not service:
            raise ValueError("a redis+sentinel:// URL needs the service name: "
                             "redis+sentinel://host:26379[,host:26379]/0/mymaster")
        return Endpoint("redis+sentinel", username=username, password=password,
                        sentinels=tuple(sentinels), service=service)
    raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")


async def resolve(endpoint: Endpoint) -> tuple[str, int]:
    """The primary's address: the URL's own, or the one the sentinels name now."""
    if not endpoint.sentinels:
        return endpoint.host, endpoint.port
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(list(endpoint.sentinels), socket_timeout=2.0)  # type: ignore[no-untyped-call]
    try:
        host, port = await sentinel.discover_master(endpoint.service)
    finally:
        for s in sentinel.sentinels:
            await s.aclose()
    return str(host), int(port)


def tls_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    return ssl.create_default_context() if endpoint.tls else None
