"""How each setting's text becomes a value: the parsers `gateway.config.SETTINGS` names.

Every setting arrives as the text an operator wrote (an environment variable, a flag, the
default). Each parser here turns that text into the typed value `Settings` holds, or raises
`ValueError` saying what was wrong; `load_settings` prefixes the setting's name and raises
`ConfigError`. Looking for where REDIS_URL, FRONTEND_URL, JWT_JWKS_URL or TRUSTED_PROXIES are
checked: `redis_url`, `origins`, `jwks_url`, `networks`.

They live apart from `gateway.config` so that the table of settings reads as a table, and so
that the credential checks (`gateway.config_credentials`) can use them without importing it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from gateway.policy.keys import ALL_ALGORITHMS, parse_secret_list

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
N = TypeVar("N", int, float)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says how to fix it.

    Defined here, below both `gateway.config` and `gateway.config_credentials`, which raise it.
    """


def _bounded(cast: Callable[[str], N], what: str, lo: N, hi: N) -> Callable[[str], N]:
    def parse(raw: str) -> N:
        try:
            value = cast(raw.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def int_between(lo: int, hi: int) -> Callable[[str], int]:
    return _bounded(int, "a whole number", lo, hi)


def float_between(lo: float, hi: float) -> Callable[[str], float]:
    return _bounded(float, "a number", lo, hi)


def text(raw: str) -> str:
    return raw.strip()


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def origins(raw: str) -> tuple[str, ...]:
    """FRONTEND_URL: `*` or scheme://host[:port] items, without a trailing slash."""
    items = comma_list(raw)
    for origin in items:
        if origin == "*":
            continue
        parsed = urlparse(origin)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path not in {"", "/"}:
            raise ValueError(
                f"{origin!r} is not an origin; write scheme://host[:port], e.g. https://app.example.com"
            )
    return tuple(o.rstrip("/") for o in items)


def redis_url(raw: str) -> str:
    """REDIS_URL: empty (the in-memory bus) or a URL of one of `REDIS_SCHEMES`."""
    url = raw.strip()
    if not url:
        return ""
    scheme = urlparse(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r}; use one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    if scheme.endswith("+cluster"):
        from publisher.cluster import parse_cluster_url

        parse_cluster_url(url)  # a bad cluster URL stops the start here, with what is wrong
    return url


def algorithms(raw: str) -> tuple[str, ...]:
    """JWT_ALGORITHMS (applied by `config_credentials.resolve_jwt`, once the keys are known)."""
    algs = comma_list(raw)
    if not algs:
        raise ValueError("list at least one algorithm, e.g. RS256")
    for alg in algs:
        if alg not in ALL_ALGORITHMS:
            raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(sorted(ALL_ALGORITHMS))}")
    return algs


def networks(raw: str) -> tuple[Network, ...]:
    """TRUSTED_PROXIES, HANDSHAKE_RATE_EXEMPT: comma-separated IP networks (host bits allowed)."""
    nets = []
    for part in comma_list(raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(nets)


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def secret_list(raw: str) -> tuple[tuple[str | None, str], ...]:
    """JWT_SECRETS: `secret` or `kid:secret` items (the format is `policy.keys`'s)."""
    return parse_secret_list(raw)


def jwks_url(raw: str) -> str:
    """https://..., http:// to a loopback address (a sidecar), or file:///path."""
    url = raw.strip()
    if not url:
        return ""
    parsed = urlparse(url)
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme == "http" and parsed.hostname:
        if is_loopback(parsed.hostname):
            return url
        raise ValueError("http:// is allowed only to a loopback address (127.0.0.1, ::1, localhost): "
                         "keys fetched in clear from elsewhere could be swapped on the way; use https://")
    if parsed.scheme == "file" and parsed.path and not parsed.netloc:
        return url
    raise ValueError("expected https://host/path, http://127.0.0.1:port/path or file:///absolute/path")


def is_loopback(host: str) -> bool:
    """Whether a host name or address names this machine only (IPv4-mapped loopback included)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse
