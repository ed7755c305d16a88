"""Settings: every knob declared once, with its environment name, default, parser and doc.

`gateway --help`, the README's settings table and the start-up validation are all generated
from `SETTINGS`, so they cannot drift apart (a test checks the README). A bad value stops the
start with `ConfigError`, whose message names the setting, says what was wrong and what to do.

This module is the one to import (`from gateway.config import ...`); the work is split by job:
- `gateway.config_parsers`: how each setting's text becomes a value (`redis_url`, `networks`...),
  and `ConfigError`;
- `gateway.config_credentials`: which JWT keys verify tokens, and why a secret gets refused
  (`EXAMPLE_SECRETS`, `MIN_SECRET_BYTES`, the weak-credential checks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.config_credentials import (
    EXAMPLE_SECRETS,
    MIN_PUBLISH_KEY_BYTES,
    MIN_SECRET_BYTES,
    refuse_weak_credentials,
    resolve_jwt,
)
from gateway.config_parsers import (
    ConfigError,
    boolean,
    choice,
    float_between,
    int_between,
    is_loopback,
    jwks_url,
    networks,
    origins,
    redis_url,
    secret_list,
    text,
)
from publisher.redis_url import redact

__all__ = [
    "EXAMPLE_SECRETS",
    "MIN_PUBLISH_KEY_BYTES",
    "MIN_SECRET_BYTES",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "Settings",
    "_networks",
    "load_settings",
    "settings_table",
]

# tests/unit/test_admission_policy.py builds networks with it (its name from before the split).
_networks = networks


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
    Setting("port", "PORT", "8080", int_between(0, 65535), "TCP port to listen on."),
    Setting("host", "HOST", "0.0.0.0", text,  # noqa: S104
            "Address to listen on. With --dev: 127.0.0.1 unless HOST is set (the dev console, its tokens "
            "and the printed keys stay on this machine)."),
    Setting(
        "redis_url", "REDIS_URL", "", redis_url,
        "The bus: redis://, rediss://, unix://, redis+sentinel://host:port[,host:port]/db/service or, for a "
        "Redis Cluster, redis+cluster://host:port[,host:port] (rediss+cluster:// with TLS)."
        " Unset: one replica with an in-memory bus.",
        secret=True,
    ),
    Setting("jwt_secret", "JWT_SECRET", "", text,
            "HS256 key for handshake tokens, 32 bytes or more (shorter, or a value from the repository's "
            "examples, stops the start outside --dev).", secret=True),
    Setting("jwt_secrets", "JWT_SECRETS", "", secret_list,
            "More HS keys accepted besides JWT_SECRET, for rotation: comma-separated items `secret` or "
            "`kid:secret`. A token whose header names a kid is checked with that key only; one without "
            "a kid tries every key in order.", secret=True),
    Setting("jwt_public_key", "JWT_PUBLIC_KEY", "", text,
            "PEM public key(s) for RS/PS/ES/EdDSA tokens (the text itself; each PEM block is a key, "
            "tried in order)."),
    Setting("jwt_public_key_file", "JWT_PUBLIC_KEY_FILE", "", text,
            "Path of a file of PEM public key(s) or certificates, instead of JWT_PUBLIC_KEY."),
    Setting("jwt_jwks_url", "JWT_JWKS_URL", "", jwks_url,
            "JWKS document of verification keys, chosen by kid: https://..., http:// to a loopback address "
            "only, or file:///path (only a file may hold HS `oct` keys). Fetched before the replica listens "
            "and every JWT_JWKS_REFRESH seconds; the last good set is kept while a fetch fails.",
            secret=True),
    Setting("jwt_jwks_refresh", "JWT_JWKS_REFRESH", "300", float_between(10, 86_400),
            "Seconds between JWKS fetches (a token naming an unknown kid brings the next one forward, at "
            "most every 30 s)."),
    Setting("jwt_algorithms", "JWT_ALGORITHMS", "", text,
            "Accepted algorithms, comma-separated. Each key verifies its own family only (HS secrets HS*, "
            "RSA keys RS*/PS*, EC keys ES*, Ed25519 keys EdDSA). Default: HS256 for secrets, RS256 for RSA "
            "keys, the curve's ES* for EC keys, a JWK's own `alg`."),
    Setting("jwt_require_exp", "JWT_REQUIRE_EXP", "true", boolean,
            "Refuse tokens without an `exp` claim (token_invalid): such a token would never expire."),
    Setting("jwt_audience", "JWT_AUDIENCE", "", text, "Required `aud` claim, when set."),
    Setting("jwt_issuer", "JWT_ISSUER", "", text, "Required `iss` claim, when set."),
    Setting("jwt_leeway", "JWT_LEEWAY", "0", float_between(0, 300), "Clock skew allowed on exp/nbf, seconds."),
    Setting("frontend_url", "FRONTEND_URL", "http://localhost:5173", origins,
            "Allowed browser origins, comma-separated (CORS for polling, Origin check on WebSocket)."),
    Setting("recovery_window", "RECOVERY_WINDOW", "120", float_between(0, 3600),
            "Seconds a dropped client may come back and recover its session and missed events; 0: off."),
    Setting("history_max_len", "HISTORY_MAX_LEN", "1000", int_between(10, 1_000_000),
            "Events kept per room for recovery (approximate, also bounded by RECOVERY_WINDOW)."),
    Setting("drain_seconds", "DRAIN_SECONDS", "20", float_between(0, 3600),
            "After SIGTERM, seconds over which clients are let go before the process exits."),
    Setting("ping_interval", "PING_INTERVAL", "25000", int_between(1000, 600_000),
            "Engine.IO heartbeat interval, ms."),
    Setting("ping_timeout", "PING_TIMEOUT", "20000", int_between(1000, 600_000),
            "Engine.IO heartbeat timeout, ms."),
    Setting("publish_api_key", "PUBLISH_API_KEY", "", text,
            "Bearer key of POST /api/emit, 24 bytes or more (e.g. `openssl rand -hex 24`); unset: the endpoint "
            "is off.", secret=True),
    Setting("max_payload_bytes", "MAX_PAYLOAD_BYTES", "65536", int_between(1024, 1_048_576),
            "Largest client packet and producer payload, bytes."),
    Setting("send_buffer_limit", "SEND_BUFFER_LIMIT", "1048576", int_between(16_384, 64 * 1_048_576),
            "Bytes queued to one slow client before its transport is closed (it reconnects and recovers)."),
    Setting("rate_limit_events", "RATE_LIMIT_EVENTS", "20", float_between(0.1, 100_000),
            "Client events per second allowed per connection (token bucket refill)."),
    Setting("rate_limit_burst", "RATE_LIMIT_BURST", "40", int_between(1, 100_000),
            "Client events a connection may send at once (token bucket size)."),
    Setting("rate_limit_disconnect_after", "RATE_LIMIT_DISCONNECT_AFTER", "100", int_between(1, 1_000_000),
            "Refused events after which an abusive connection is disconnected."),
    Setting("handshake_rate_per_ip", "HANDSHAKE_RATE_PER_IP", "100", float_between(0.1, 1_000_000),
            "New connections per second allowed per client IP (burst: 5 times that: a school behind one NAT "
            "reconnecting at once)."),
    Setting("handshake_rate_exempt", "HANDSHAKE_RATE_EXEMPT", "127.0.0.0/8,::1/128", networks,
            "Client networks the per-IP handshake rate does not apply to (local probes, sidecars)."),
    Setting("handshake_shed_lag", "HANDSHAKE_SHED_LAG", "1.0", float_between(0, 60),
            "Seconds the event loop may run behind before new connections are refused with a retryable 503 "
            "(a reconnect storm bigger than the replica: the refused clients come back after their backoff, "
            "the admitted ones finish inside socket.io-client's 20 s timeout). 0: off."),
    Setting("max_connects_in_flight", "MAX_CONNECTS_IN_FLIGHT", "10000", int_between(0, 1_000_000),
            "Socket.IO CONNECTs being processed at once (token check, recovery reads from Redis) past which new "
            "connections are refused with a retryable 503: a bound for a Redis that stalls, far above what a "
            "storm queues on a healthy one (queued CONNECTs are cheap; refused clients only come back later). "
            "0: off."),
    Setting("max_connections_per_user", "MAX_CONNECTIONS_PER_USER", "20", int_between(1, 100_000),
            "Sockets one user may hold on one replica."),
    Setting("trusted_proxies", "TRUSTED_PROXIES", "127.0.0.1/32,::1/128", networks,
            "Networks whose X-Forwarded-For is believed (the load balancer)."),
    Setting("handshake_timeout", "HANDSHAKE_TIMEOUT", "10", float_between(1, 300),
            "Seconds a connection may stay without completing its Socket.IO handshake."),
    Setting("ws_accept", "WS_ACCEPT", "native", choice("native", "aiohttp"),
            "Who accepts WebSocket connections: native (the gateway's own protocol on the listening "
            "socket; every other request still goes to aiohttp) or aiohttp (the former path, a fallback)."),
    Setting("channel_prefix", "CHANNEL_PREFIX", "socket.io", text,
            "Prefix of the Redis pub/sub channels (same scheme as @socket.io/redis-adapter)."),
    Setting("key_prefix", "KEY_PREFIX", "ngw", text, "Prefix of the Redis keys (history, sessions, presence)."),
    Setting("log_level", "LOG_LEVEL", "info", choice("debug", "info", "warning", "error"),
            "Log verbosity."),
    Setting("log_format", "LOG_FORMAT", "json", choice("json", "text"),
            "json: one JSON object per line; text: for a terminal."),
    Setting("dev", "GATEWAY_DEV", "false", boolean,
            "Development mode (same as --dev): in-memory bus unless REDIS_URL, ephemeral secret unless one "
            "is set, console at / (loopback clients only), listens on 127.0.0.1 unless HOST is set."),
)

_BY_ATTR = {s.attr: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration of one replica. Build it with `load_settings`."""

    port: int = 8080
    host: str = "0.0.0.0"  # noqa: S104
    redis_url: str = ""
    jwt_secret: str = ""
    jwt_secrets: tuple[tuple[str | None, str], ...] = ()
    jwt_public_key: str = ""
    jwt_public_key_file: str = ""
    jwt_jwks_url: str = ""
    jwt_jwks_refresh: float = 300.0
    # JWT_ALGORITHMS as given; empty: each key's own default (see the setting's doc).
    jwt_algorithms: tuple[str, ...] = ()
    jwt_require_exp: bool = True
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
        default_factory=lambda: networks("127.0.0.0/8,::1/128")
    )
    handshake_shed_lag: float = 1.0
    max_connects_in_flight: int = 10000
    max_connections_per_user: int = 20
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default_factory=lambda: networks("127.0.0.1/32,::1/128")
    )
    handshake_timeout: float = 10.0
    ws_accept: str = "native"
    channel_prefix: str = "socket.io"
    key_prefix: str = "ngw"
    log_level: str = "info"
    log_format: str = "json"
    dev: bool = False
    # --dev made JWT_SECRET up (none was configured): tokens from elsewhere do not verify.
    jwt_secret_generated: bool = False
    # The JWKS document of a file:// JWT_JWKS_URL as read at start (the refresher re-reads it).
    jwt_jwks_document: bytes = b""

    @property
    def signing_secret(self) -> tuple[str | None, str] | None:
        """(kid, secret) a token can be minted with here (the dev console, the banner): JWT_SECRET,
        else the first of JWT_SECRETS; None with public keys only."""
        if self.jwt_secret:
            return None, self.jwt_secret
        return self.jwt_secrets[0] if self.jwt_secrets else None

    @property
    def beyond_loopback(self) -> bool:
        """Whether HOST lets other machines connect (0.0.0.0, ::, a LAN address, a name)."""
        return not is_loopback(self.host)

    def advisories(self) -> list[str]:
        """Things that work but an operator should fix; logged as warnings at start."""
        out = []
        if self.dev:
            for name, secret in self._hmac_secrets():
                if len(secret.encode()) < MIN_SECRET_BYTES:
                    out.append(f"{name} is {len(secret.encode())} bytes: accepted in development mode only "
                               f"(outside --dev it must be {MIN_SECRET_BYTES} bytes or more)")
        if "*" in self.frontend_url:
            out.append("FRONTEND_URL is '*': any web page may open sockets with a user's cookies")
        return out

    def _hmac_secrets(self) -> list[tuple[str, str]]:
        named = [("JWT_SECRET", self.jwt_secret)] if self.jwt_secret and not self.jwt_secret_generated else []
        return named + [(f"JWT_SECRETS item {i}", secret) for i, (_, secret) in enumerate(self.jwt_secrets, 1)]

    def public_view(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets masked, URLs without their credentials."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            setting = _BY_ATTR.get(f.name)
            if setting is not None and setting.secret and value:
                value = redact(value) if f.name in _URL_SETTINGS else "***"
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[f.name] = value
        out["jwt_public_key"] = "<set>" if self.jwt_public_key else ""
        out["jwt_jwks_document"] = "<set>" if self.jwt_jwks_document else ""
        return out


_URL_SETTINGS = frozenset({"redis_url", "jwt_jwks_url"})


def load_settings(env: Mapping[str, str], overrides: Mapping[str, str] | None = None,
                  *, dev: bool = False) -> Settings:
    """Build `Settings` from the environment, with flag values (`overrides`, by attr) on top.

    Raises ConfigError naming the first bad setting.
    """
    overrides = overrides or {}
    values: dict[str, Any] = {}
    given: set[str] = set()
    for s in SETTINGS:
        raw = overrides.get(s.attr)
        source = s.flag
        if raw is None:
            raw = env.get(s.env)
            source = s.env
        if raw is None:
            raw, source = s.default, s.env
        else:
            given.add(s.attr)
        try:
            values[s.attr] = s.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    dev = dev or values.pop("dev")
    values.pop("dev", None)
    values["dev"] = dev
    if dev and "host" not in given:
        # Development mode prints a token and a publish key, serves a console that mints admin
        # tokens and accepts example secrets: on this machine only, unless asked otherwise.
        values["host"] = "127.0.0.1"
    resolve_jwt(values, dev=dev)
    if not dev:
        refuse_weak_credentials(values)
    if values["ping_timeout"] >= values["ping_interval"] + 60_000:
        raise ConfigError("PING_TIMEOUT: must be less than PING_INTERVAL + 60 s")
    return Settings(**values)


def settings_table() -> str:
    """The README's settings table, in Markdown (a test keeps the README equal to it)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {s.doc} |")
    return "\n".join(rows)
