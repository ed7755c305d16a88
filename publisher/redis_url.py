"""Redis clients from one URL, the way REDIS_URL is written for the gateway and its producers.

Schemes: `redis://`, `rediss://` (TLS), `unix:///path/to/socket?db=0` (all as redis-py reads
them) and, for Sentinel,

    redis+sentinel://[user:password@]host:port[,host:port...]/db/service_name

where the credentials are the master's, a port defaults to 26379, and the query may add
`sentinel_password` (and `sentinel_username`) when the Sentinels themselves require auth.

The defaults fail fast rather than hang a web request: 2 s to connect, 5 s per reply, a PING
before reusing a connection idle for 15 s, TCP keepalive. A pub/sub listener that blocks on
`listen()` should pass `socket_timeout=None` (or poll with `get_message(timeout=...)`).
Keyword options override the defaults and the URL's query. Credentials never appear in error
messages: see `redact`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel")
DEFAULT_SENTINEL_PORT: Final = 26379
DEFAULT_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 15,
    "socket_keepalive": True,
})


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


_CREDENTIAL_PARAM = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with every credential replaced by `***`, for messages and logs.

    Masked: the userinfo password, and the value of every query parameter named like a
    credential (`password`, `sentinel_password`, `ssl_password`, `token`, `api_key`...). A URL
    whose credentials cannot be placed for sure (an `@` after the host, which is what a password
    holding an unencoded `/`, `?` or `#` looks like) is reduced to its scheme: better a log line
    that says less than one that holds part of a password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme:
        return "***"
    if "#" in url or "@" in parts.path or "@" in parts.query:
        return f"{parts.scheme}://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if sep else f"{user}@{hosts}"
    query = "&".join(
        f"{key}=***" if sep and _CREDENTIAL_PARAM.search(unquote(key)) else item
        for item in parts.query.split("&") if item
        for key, sep, _ in [item.partition("=")]
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return [(k, v) for k, values in parse_qs(query, keep_blank_values=True).items() for v in values]


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"bad Redis URL {redact(url)!r}: {why}")


def _hostport(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(url, f"sentinel address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"sentinel address {item!r} has a bad port")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse `redis+sentinel://[user:pw@]host:port[,host:port]/db/service_name`."""
    rest = url.partition("://")[2]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    items = [h for h in hosts.split(",") if h.strip()]
    if not items:
        raise _bad(url, "no sentinel address; write redis+sentinel://host:26379/0/mymaster")
    sentinels = tuple(_hostport(url, h.strip()) for h in items)
    segments = [s for s in path.split("/") if s]
    if len(segments) == 2 and segments[0].isdigit():
        db, service = int(segments[0]), segments[1]
    elif len(segments) == 1 and not segments[0].isdigit():
        db, service = 0, segments[0]
    else:
        raise _bad(url, "the path must be /db/service_name, e.g. /0/mymaster")
    username = password = None
    if at:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    options = dict(_query_pairs(query))
    unknown = set(options) - {"sentinel_username", "sentinel_password"}
    if unknown:
        raise _bad(url, f"unknown option(s) {', '.join(sorted(unknown))}; "
                        "known: sentinel_username, sentinel_password")
    return SentinelTarget(
        sentinels, unquote(service), db, username, password,
        options.get("sentinel_username"), options.get("sentinel_password"),
    )


def _check(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the Redis URL is empty; write e.g. redis://localhost:6379/0")
    url = url.strip()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise _bad(url, f"unsupported scheme {scheme!r}; use one of "
                        + ", ".join(s + "://" for s in SCHEMES))
    if scheme in {"redis", "rediss"}:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises for a port that is not a number or out of range
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _bad(url, f"the path must be a database number, got {db!r}")
    if scheme == "unix" and not urlsplit(url).path:
        raise _bad(url, "no socket path; write unix:///path/to/redis.sock?db=0")
    return scheme


def _sentinel_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password
    if target.sentinel_username is not None:
        kwargs["username"] = target.sentinel_username
    return kwargs


def _master_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"db": target.db, **options}
    if target.username is not None:
        kwargs.setdefault("username", target.username)
    if target.password is not None:
        kwargs.setdefault("password", target.password)
    return kwargs


def _options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    defaults = dict(DEFAULT_OPTIONS)
    if scheme == "unix":  # TCP keepalive means nothing on a Unix socket (redis-py refuses it)
        del defaults["socket_keepalive"]
    return {**defaults, **options}


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for `url` (see the module doc); it connects on first use."""
    scheme = _check(url)
    merged = _options(scheme, options)
    if scheme == "redis+sentinel":
        target = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, merged)
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service_name, **_master_kwargs(target, merged)
        )
        return master
    try:
        return redis.Redis.from_url(url.strip(), **merged)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None


def sentinel_clients(client: Any) -> list[Any]:
    """The clients a redis+sentinel client keeps to the sentinels themselves (to find the
    primary): closing the client leaves them open, so whoever closes it closes these too."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", ()))


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """A redis.asyncio client for `url` (see the module doc); it connects on first use."""
    scheme = _check(url)
    merged = _options(scheme, options)
    if scheme == "redis+sentinel":
        target = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, merged)
        )
        client: redis.asyncio.Redis = sentinel.master_for(
            target.service_name, **_master_kwargs(target, merged)
        )
        return client
    try:
        return redis.asyncio.Redis.from_url(url.strip(), **merged)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
