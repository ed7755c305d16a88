"""Settings: every knob declared once, with its environment name, default, parser and doc.

`gateway --help`, the README's settings table and the start-up validation are all generated
from `SETTINGS`, so they cannot drift apart (a test checks the README). A bad value stops the
start with `ConfigError`, whose message names the setting, says what was wrong and what to do.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
MIN_SECRET_BYTES = 32
N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says how to fix it."""


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


def _int(lo: int, hi: int) -> Callable[[str], int]:
    return _bounded(int, "a whole number", lo, hi)


def _float(lo: float, hi: float) -> Callable[[str], float]:
    return _bounded(float, "a number", lo, hi)


def _str(raw: str) -> str:
    return raw.strip()


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _origins(raw: str) -> tuple[str, ...]:
    origins = _list(raw)
    for origin in origins:
        if origin == "*":
            continue
        parsed = urlparse(origin)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path not in {"", "/"}:
            raise ValueError(
                f"{origin!r} is not an origin; write scheme://host[:port], e.g. https://app.example.com"
            )
    return tuple(o.rstrip("/") for o in origins)


def _redis_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        return ""
    scheme = urlparse(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r}; use one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    return url


def _algorithms(raw: str) -> tuple[str, ...]:
    algs = _list(raw)
    if not algs:
        raise ValueError("list at least one algorithm, e.g. RS256")
    known = ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS
    for alg in algs:
        if alg not in known:
            raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(sorted(known))}")
    return algs


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in _list(raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(nets)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class Setting:
    """One knob: where it comes from, its default (as the text an operator would write)."""

    attr: str
    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.attr.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("port", "PORT", "8080", _int(0, 65535), "TCP port to listen on."),
    Setting("host", "HOST", "0.0.0.0", _str, "Address to listen on."),  # noqa: S104
    Setting(
        "redis_url", "REDIS_URL", "", _redis_url,
        "The bus: redis://, rediss://, unix:// or redis+sentinel://host:port[,host:port]/db/service."
        " Unset: one replica with an in-memory bus.",
        secret=True,
    ),
    Setting("jwt_secret", "JWT_SECRET", "", _str, "HS256 key for handshake tokens (32 bytes or more).",
            secret=True),
    Setting("jwt_public_key", "JWT_PUBLIC_KEY", "", _str,
            "PEM public key for RS256/ES256 tokens (the text itself)."),
    Setting("jwt_public_key_file", "JWT_PUBLIC_KEY_FILE", "", _str,
            "Path of a PEM public key for RS256/ES256 tokens."),
    Setting("jwt_algorithms", "JWT_ALGORITHMS", "", _str,
            "Accepted algorithms, comma-separated. Default: HS256 with a secret, RS256,ES256 with a key."),
    Setting("jwt_audience", "JWT_AUDIENCE", "", _str, "Required `aud` claim, when set."),
    Setting("jwt_issuer", "JWT_ISSUER", "", _str, "Required `iss` claim, when set."),
    Setting("jwt_leeway", "JWT_LEEWAY", "0", _float(0, 300), "Clock skew allowed on exp/nbf, seconds."),
    Setting("frontend_url", "FRONTEND_URL", "http://localhost:5173", _origins,
            "Allowed browser origins, comma-separated (CORS for polling, Origin check on WebSocket)."),
    Setting("recovery_window", "RECOVERY_WINDOW", "120", _float(0, 3600),
            "Seconds a dropped client may come back and recover its session and missed events; 0: off."),
    Setting("history_max_len", "HISTORY_MAX_LEN", "1000", _int(10, 1_000_000),
            "Events kept per room for recovery (approximate, also bounded by RECOVERY_WINDOW)."),
    Setting("drain_seconds", "DRAIN_SECONDS", "20", _float(0, 3600),
            "After SIGTERM, seconds over which clients are let go before the process exits."),
    Setting("ping_interval", "PING_INTERVAL", "25000", _int(1000, 600_000),
            "Engine.IO heartbeat interval, ms."),
    Setting("ping_timeout", "PING_TIMEOUT", "20000", _int(1000, 600_000),
            "Engine.IO heartbeat timeout, ms."),
    Setting("publish_api_key", "PUBLISH_API_KEY", "", _str,
            "Bearer key of POST /api/emit; unset: the endpoint is off.", secret=True),
    Setting("max_payload_bytes", "MAX_PAYLOAD_BYTES", "65536", _int(1024, 1_048_576),
            "Largest client packet and producer payload, bytes."),
    Setting("send_buffer_limit", "SEND_BUFFER_LIMIT", "1048576", _int(16_384, 64 * 1_048_576),
            "Bytes queued to one slow client before its transport is closed (it reconnects and recovers)."),
    Setting("rate_limit_events", "RATE_LIMIT_EVENTS", "20", _float(0.1, 100_000),
            "Client events per second allowed per connection (token bucket refill)."),
    Setting("rate_limit_burst", "RATE_LIMIT_BURST", "40", _int(1, 100_000),
            "Client events a connection may send at once (token bucket size)."),
    Setting("rate_limit_disconnect_after", "RATE_LIMIT_DISCONNECT_AFTER", "100", _int(1, 1_000_000),
            "Refused events after which an abusive connection is disconnected."),
    Setting("handshake_rate_per_ip", "HANDSHAKE_RATE_PER_IP", "100", _float(0.1, 1_000_000),
            "New connections per second allowed per client IP (burst: 5 times that: a school behind one NAT "
            "reconnecting at once)."),
    Setting("handshake_rate_exempt", "HANDSHAKE_RATE_EXEMPT", "127.0.0.0/8,::1/128", _networks,
            "Client networks the per-IP handshake rate does not apply to (local probes, sidecars)."),
    Setting("max_connections_per_user", "MAX_CONNECTIONS_PER_USER", "20", _int(1, 100_000),
            "Sockets one user may hold on one replica."),
    Setting("trusted_proxies", "TRUSTED_PROXIES", "127.0.0.1/32,::1/128", _networks,
            "Networks whose X-Forwarded-For is believed (the load balancer)."),
    Setting("handshake_timeout", "HANDSHAKE_TIMEOUT", "10", _float(1, 300),
            "Seconds a connection may stay without completing its Socket.IO handshake."),
    Setting("channel_prefix", "CHANNEL_PREFIX", "socket.io", _str,
            "Prefix of the Redis pub/sub channels (same scheme as @socket.io/redis-adapter)."),
    Setting("key_prefix", "KEY_PREFIX", "ngw", _str, "Prefix of the Redis keys (history, sessions, presence)."),
    Setting("log_level", "LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
            "Log verbosity."),
    Setting("log_format", "LOG_FORMAT", "json", _choice("json", "text"),
            "json: one JSON object per line; text: for a terminal."),
    Setting("dev", "GATEWAY_DEV", "false", _choice("true", "false", "1", "0"),
            "Development mode (same as --dev): in-memory bus unless REDIS_URL, ephemeral secret, "
            "console at /."),
)

_BY_ATTR = {s.attr: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration of one replica. Build it with `load_settings`."""

    port: int = 8080
    host: str = "0.0.0.0"  # noqa: S104
    redis_url: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: float = 0.0
    frontend_url: tuple[str, ...] = ("http://localhost:5173",)
    recovery_window: float = 120.0
    history_max_len: int = 1000
    drain_seconds: float = 20.0
    ping_interval: int = 25000
    ping_timeout: int = 20000
    publish_api_key: str = ""
    max_payload_bytes: int = 65536
    send_buffer_limit: int = 1_048_576
    rate_limit_events: float = 20.0
    rate_limit_burst: int = 40
    rate_limit_disconnect_after: int = 100
    handshake_rate_per_ip: float = 100.0
    handshake_rate_exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default_factory=lambda: _networks("127.0.0.0/8,::1/128")
    )
    max_connections_per_user: int = 20
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default_factory=lambda: _networks("127.0.0.1/32,::1/128")
    )
    handshake_timeout: float = 10.0
    channel_prefix: str = "socket.io"
    key_prefix: str = "ngw"
    log_level: str = "info"
    log_format: str = "json"
    dev: bool = False

    @property
    def jwt_key(self) -> str:
        """The verification key: the public key when one is set, else the shared secret."""
        return self.jwt_public_key or self.jwt_secret

    def advisories(self) -> list[str]:
        """Things that work but an operator should fix; logged as warnings at start."""
        out = []
        if self.jwt_secret and not self.dev and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            out.append(
                f"JWT_SECRET is {len(self.jwt_secret.encode())} bytes; use at least {MIN_SECRET_BYTES}"
                " random bytes (e.g. `openssl rand -hex 32`): a short HMAC key can be brute-forced"
            )
        if "*" in self.frontend_url:
            out.append("FRONTEND_URL is '*': any web page may open sockets with a user's cookies")
        return out

    def public_view(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            setting = _BY_ATTR.get(f.name)
            if setting is not None and setting.secret and value:
                value = _mask(f.name, value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[f.name] = value
        out["jwt_public_key"] = "<set>" if self.jwt_public_key else ""
        return out


def _mask(name: str, value: str) -> str:
    if name == "redis_url":
        parsed = urlparse(value)
        if parsed.password:
            return value.replace(f":{parsed.password}@", ":***@")
        return value
    return "***"


def load_settings(env: Mapping[str, str], overrides: Mapping[str, str] | None = None,
                  *, dev: bool = False) -> Settings:
    """Build `Settings` from the environment, with flag values (`overrides`, by attr) on top.

    Raises ConfigError naming the first bad setting.
    """
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = overrides.get(s.attr)
        source = s.flag
        if raw is None:
            raw = env.get(s.env)
            source = s.env
        if raw is None:
            raw, source = s.default, s.env
        try:
            values[s.attr] = s.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    dev = dev or values.pop("dev") in {"true", "1"}
    values.pop("dev", None)
    values["dev"] = dev
    _resolve_jwt(values, dev=dev)
    if values["ping_timeout"] >= values["ping_interval"] + 60_000:
        raise ConfigError("PING_TIMEOUT: must be less than PING_INTERVAL + 60 s")
    return Settings(**values)


def _resolve_jwt(values: dict[str, Any], *, dev: bool) -> None:
    key_file = values["jwt_public_key_file"]
    if key_file:
        if values["jwt_public_key"]:
            raise ConfigError("JWT_PUBLIC_KEY_FILE: set either JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both")
        try:
            values["jwt_public_key"] = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot read {key_file}: {exc.strerror}") from None
    public_key = values["jwt_public_key"]
    if public_key and "-----BEGIN" not in public_key:
        source = "JWT_PUBLIC_KEY_FILE" if key_file else "JWT_PUBLIC_KEY"
        raise ConfigError(f"{source}: not a PEM public key (expected a -----BEGIN PUBLIC KEY----- block)")
    if public_key and values["jwt_secret"]:
        raise ConfigError(
            "JWT_SECRET: set either JWT_SECRET (HS256) or a public key (RS256/ES256), not both: "
            "accepting both would open the door to key-confusion attacks"
        )
    raw_algs = values["jwt_algorithms"]
    if raw_algs:
        try:
            algs = _algorithms(raw_algs)
        except ValueError as exc:
            raise ConfigError(f"JWT_ALGORITHMS: {exc}") from None
    else:
        algs = ("RS256", "ES256") if public_key else ("HS256",)
    if public_key and not set(algs) <= ASYMMETRIC_ALGORITHMS:
        raise ConfigError("JWT_ALGORITHMS: with a public key only asymmetric algorithms are allowed "
                          f"(got {', '.join(algs)})")
    if not public_key and not set(algs) <= HMAC_ALGORITHMS:
        raise ConfigError("JWT_ALGORITHMS: with JWT_SECRET only HS256/HS384/HS512 are allowed "
                          f"(got {', '.join(algs)}); for RS256/ES256 set JWT_PUBLIC_KEY")
    values["jwt_algorithms"] = algs
    if not public_key and not values["jwt_secret"]:
        if not dev:
            raise ConfigError(
                "JWT_SECRET: not set. The gateway refuses to start without a way to verify tokens: "
                "set JWT_SECRET (HS256, 32+ random bytes, e.g. `openssl rand -hex 32`) or "
                "JWT_PUBLIC_KEY / JWT_PUBLIC_KEY_FILE (RS256/ES256), or run `gateway --dev` to try it out"
            )
        values["jwt_secret"] = secrets.token_urlsafe(48)


def settings_table() -> str:
    """The README's settings table, in Markdown (a test keeps the README equal to it)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {s.doc} |")
    return "\n".join(rows)
