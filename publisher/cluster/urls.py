"""The `redis+cluster://` URL: where the seed nodes are, and what a connection to a node needs.

Parsed apart from any I/O (`parse_cluster_url` only reads the text), so that a bad URL is
refused when the settings are read, before a node is asked anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from publisher.redis_url import redact

__all__ = [
    "DEFAULT_PORT",
    "SCHEMES",
    "ClusterTarget",
    "NodeAddress",
    "cluster_url_for",
    "is_cluster_url",
    "parse_cluster_url",
]

SCHEMES: Final = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT: Final = 6379


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one node listens, with what a connection to it needs (TLS, credentials).

    Equal and hashed by host and port only: every node of a cluster shares the rest.
    """

    host: str
    port: int
    tls: bool = field(default=False, compare=False)
    username: str | None = field(default=None, compare=False)
    password: str | None = field(default=None, compare=False, repr=False)
    # ssl_* options of redis-py (ssl_ca_certs, ssl_cert_reqs...), as (name, value) pairs
    tls_options: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis(...)` or `redis.asyncio.Redis(...)` to this node."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update(self.tls_options)
        return kwargs


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A parsed `redis+cluster://` or `rediss+cluster://` URL."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # redis-py client options from the URL's query (socket_timeout, ssl_ca_certs...)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    url: str = ""  # redacted, for messages; empty: made from the seeds

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        scheme = SCHEMES[1] if self.tls else SCHEMES[0]
        return f"{scheme}://" + ",".join(str(NodeAddress(h, p)) for h, p in self.seeds)

    def node(self, host: str, port: int) -> NodeAddress:
        """The address of a node of this cluster: its TLS settings and credentials are ours."""
        tls_options = tuple(sorted((k, v) for k, v in self.options.items() if k.startswith("ssl_")))
        return NodeAddress(host, port, self.tls, self.username, self.password, tls_options)

    def seed_nodes(self) -> tuple[NodeAddress, ...]:
        return tuple(self.node(host, port) for host, port in self.seeds)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
    return isinstance(url, str) and url.strip().partition("://")[0].lower() in SCHEMES


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"bad Redis Cluster URL {redact(url)!r}: {why}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("must be a whole number")
    return int(text)


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _cert_reqs(text: str) -> str:
    if text.lower() not in {"none", "optional", "required"}:
        raise ValueError("must be none, optional or required")
    return text.lower()


# Options a node's client takes from the query, as for redis-py's redis:// and rediss:// URLs.
_OPTIONS: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType({
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "health_check_interval": _count,
    "max_connections": _count,
    "client_name": str,
})
_TLS_OPTIONS: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType({
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
    "ssl_ciphers": str,
})


def _hostport(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise _bad(url, f"address {item!r}: an IPv6 address is written [::1]:6379")
        port_text = rest[1:]
    else:
        if item.count(":") > 1:
            raise _bad(url, f"address {item!r}: write an IPv6 address in brackets, [::1]:6379")
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(url, f"address {item!r} has no host")
    if any(c.isspace() or c in "@/?#" for c in host):
        raise _bad(url, f"address {item!r} has a bad host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"address {item!r} has a bad port")
    return host, int(port_text)


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse `redis+cluster://[user:password@]host:port[,host:port...][/][?options]`.

    `rediss+cluster://` is the same over TLS. The addresses are seeds: any reachable one tells
    where the others are. A port defaults to 6379; the path may be empty, `/` or `/0` (a
    cluster has database 0 only). The query takes the client options of redis-py's URLs
    (`socket_timeout`, `socket_connect_timeout`, `socket_keepalive`, `health_check_interval`,
    `max_connections`, `client_name`) and, with TLS, `ssl_ca_certs`, `ssl_ca_path`,
    `ssl_certfile`, `ssl_keyfile`, `ssl_password`, `ssl_cert_reqs` (none, optional,
    required), `ssl_check_hostname`, `ssl_ciphers`. A `ValueError` names what is wrong, with
    the URL's credentials masked.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the Redis Cluster URL is empty; write e.g. redis+cluster://host:6379,host:6380")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(url, f"unsupported scheme {scheme!r}; use redis+cluster:// or rediss+cluster:// (TLS)")
    if "#" in rest:
        raise _bad(url, "it holds a '#'; percent-encode it (%23) in a password")
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    end = min(ends) if ends else len(rest)
    netloc, (path, _, query) = rest[:end], rest[end:].lstrip("/").partition("?")
    if "@" in path or "@" in query:
        raise _bad(url, "percent-encode '/', '?' and '@' in the user name and password")
    userinfo, at, hosts = netloc.rpartition("@")  # no "@": hosts is the whole netloc
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    items = [item.strip() for item in hosts.split(",")]
    if not any(items):
        raise _bad(url, "no node address; write e.g. redis+cluster://host:6379,host:6380")
    if not all(items):
        raise _bad(url, "an empty address in the list of nodes")
    seeds = tuple(dict.fromkeys(_hostport(url, item) for item in items))
    if path.strip("/") not in {"", "0"}:
        raise _bad(url, f"the path {'/' + path!r} is not allowed: a Redis Cluster has database 0 only "
                        "(write no path, or /0)")
    tls = scheme == "rediss+cluster"
    options: dict[str, Any] = {}
    known = {**_OPTIONS, **_TLS_OPTIONS}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise _bad(url, f"option {name} given twice")
        parser = known.get(name)
        if parser is None:
            raise _bad(url, f"unknown option {name!r}; known: {', '.join(sorted(known))}")
        if name in _TLS_OPTIONS and not tls:
            raise _bad(url, f"option {name} needs TLS: use rediss+cluster://")
        try:
            options[name] = parser(value)
        except ValueError as exc:
            shown = "***" if name == "ssl_password" else repr(value)
            raise _bad(url, f"option {name}={shown}: {exc}") from None
    return ClusterTarget(seeds, tls, username, password, MappingProxyType(options), redact(url))


def cluster_url_for(url: str) -> str:
    """The `redis+cluster://` URL to write instead of a plain `redis[s]://host:port/db` URL that
    points at a cluster node, credentials masked: for the message that refuses the plain one."""
    shown = redact(url.strip())
    scheme, sep, rest = shown.partition("://")
    if not sep:
        return "redis+cluster://host:port[,host:port...]"
    netloc = rest.partition("/")[0].partition("?")[0]
    return f"{'rediss' if scheme.lower() == 'rediss' else 'redis'}+cluster://{netloc}"
