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
from urllib.parse import parse_qs, unquote, urlparse

from gateway.policy.keys import (
    ALL_ALGORITHMS,
    HMAC_ALGORITHMS,
    AlgorithmMismatch,
    jwks_keys,
    parse_secret_list,
    pem_keys,
    secret_key,
)
from publisher.redis_url import redact

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
MIN_SECRET_BYTES = 32
MIN_PUBLISH_KEY_BYTES = 24
N = TypeVar("N", int, float)

# Every secret, key and password that appears in the repository's examples (docker-compose.yml,
# deploy/k8s/secret.example.yaml, the docs): public, so worthless as credentials. Outside --dev
# the replica refuses to start with any of them. tests/unit/test_example_secrets.py scans the
# example files and fails when one of their values is missing here.
EXAMPLE_SECRETS: frozenset[str] = frozenset({
    # docker-compose.yml (defaults when .env does not set them)
    "dev-only-insecure-jwt-secret-change-me-0123456789",
    "dev-only-insecure-publish-key",
    # deploy/k8s/secret.example.yaml
    "example-only-0000000000000000000000000000000000000000000000000000",
    "example-only-publish-key-change-me",
    # the Redis URL of the example Secret's comment: redis://:password@host:6379/0
    "password",
})


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
    if scheme.endswith("+cluster"):
        from publisher.cluster import parse_cluster_url

        parse_cluster_url(url)  # a bad cluster URL stops the start here, with what is wrong
    return url


def _algorithms(raw: str) -> tuple[str, ...]:
    algs = _list(raw)
    if not algs:
        raise ValueError("list at least one algorithm, e.g. RS256")
    for alg in algs:
        if alg not in ALL_ALGORITHMS:
            raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(sorted(ALL_ALGORITHMS))}")
    return algs


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in _list(raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(nets)


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _secret_list(raw: str) -> tuple[tuple[str | None, str], ...]:
    return parse_secret_list(raw)


def _jwks_url(raw: str) -> str:
    """https://..., http:// to a loopback address (a sidecar), or file:///path."""
    url = raw.strip()
    if not url:
        return ""
    parsed = urlparse(url)
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme == "http" and parsed.hostname:
        if _is_loopback(parsed.hostname):
            return url
        raise ValueError("http:// is allowed only to a loopback address (127.0.0.1, ::1, localhost): "
                         "keys fetched in clear from elsewhere could be swapped on the way; use https://")
    if parsed.scheme == "file" and parsed.path and not parsed.netloc:
        return url
    raise ValueError("expected https://host/path, http://127.0.0.1:port/path or file:///absolute/path")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


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
    Setting("host", "HOST", "0.0.0.0", _str,  # noqa: S104
            "Address to listen on. With --dev: 127.0.0.1 unless HOST is set (the dev console, its tokens "
            "and the printed keys stay on this machine)."),
    Setting(
        "redis_url", "REDIS_URL", "", _redis_url,
        "The bus: redis://, rediss://, unix://, redis+sentinel://host:port[,host:port]/db/service or, for a "
        "Redis Cluster, redis+cluster://host:port[,host:port] (rediss+cluster:// with TLS)."
        " Unset: one replica with an in-memory bus.",
        secret=True,
    ),
    Setting("jwt_secret", "JWT_SECRET", "", _str,
            "HS256 key for handshake tokens, 32 bytes or more (shorter, or a value from the repository's "
            "examples, stops the start outside --dev).", secret=True),
    Setting("jwt_secrets", "JWT_SECRETS", "", _secret_list,
            "More HS keys accepted besides JWT_SECRET, for rotation: comma-separated items `secret` or "
            "`kid:secret`. A token whose header names a kid is checked with that key only; one without "
            "a kid tries every key in order.", secret=True),
    Setting("jwt_public_key", "JWT_PUBLIC_KEY", "", _str,
            "PEM public key(s) for RS/PS/ES/EdDSA tokens (the text itself; each PEM block is a key, "
            "tried in order)."),
    Setting("jwt_public_key_file", "JWT_PUBLIC_KEY_FILE", "", _str,
            "Path of a file of PEM public key(s) or certificates, instead of JWT_PUBLIC_KEY."),
    Setting("jwt_jwks_url", "JWT_JWKS_URL", "", _jwks_url,
            "JWKS document of verification keys, chosen by kid: https://..., http:// to a loopback address "
            "only, or file:///path (only a file may hold HS `oct` keys). Fetched before the replica listens "
            "and every JWT_JWKS_REFRESH seconds; the last good set is kept while a fetch fails.",
            secret=True),
    Setting("jwt_jwks_refresh", "JWT_JWKS_REFRESH", "300", _float(10, 86_400),
            "Seconds between JWKS fetches (a token naming an unknown kid brings the next one forward, at "
            "most every 30 s)."),
    Setting("jwt_algorithms", "JWT_ALGORITHMS", "", _str,
            "Accepted algorithms, comma-separated. Each key verifies its own family only (HS secrets HS*, "
            "RSA keys RS*/PS*, EC keys ES*, Ed25519 keys EdDSA). Default: HS256 for secrets, RS256 for RSA "
            "keys, the curve's ES* for EC keys, a JWK's own `alg`."),
    Setting("jwt_require_exp", "JWT_REQUIRE_EXP", "true", _flag,
            "Refuse tokens without an `exp` claim (token_invalid): such a token would never expire."),
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
            "Bearer key of POST /api/emit, 24 bytes or more (e.g. `openssl rand -hex 24`); unset: the endpoint "
            "is off.", secret=True),
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
    Setting("dev", "GATEWAY_DEV", "false", _flag,
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
        return not _is_loopback(self.host)

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
    _resolve_jwt(values, dev=dev)
    if not dev:
        _refuse_weak_credentials(values)
    if values["ping_timeout"] >= values["ping_interval"] + 60_000:
        raise ConfigError("PING_TIMEOUT: must be less than PING_INTERVAL + 60 s")
    return Settings(**values)


def _resolve_jwt(values: dict[str, Any], *, dev: bool) -> None:
    """Load every configured key once, so that a bad one stops the start naming its setting."""
    key_file = values["jwt_public_key_file"]
    if key_file:
        if values["jwt_public_key"]:
            raise ConfigError("JWT_PUBLIC_KEY_FILE: set either JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both")
        try:
            values["jwt_public_key"] = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot read {key_file}: {exc.strerror}") from None
    allowed: frozenset[str] | None = None
    if values["jwt_algorithms"]:
        try:
            values["jwt_algorithms"] = _algorithms(values["jwt_algorithms"])
        except ValueError as exc:
            raise ConfigError(f"JWT_ALGORITHMS: {exc}") from None
        allowed = frozenset(values["jwt_algorithms"])
    else:
        values["jwt_algorithms"] = ()
    if values["jwt_secret"]:
        _key_or_config_error("JWT_SECRET", lambda: secret_key("JWT_SECRET", None, values["jwt_secret"],
                                                                allowed or HMAC_ALGORITHMS))
    if values["jwt_secrets"]:
        _key_or_config_error("JWT_SECRETS", lambda: [
            secret_key(f"JWT_SECRETS item {i}", kid, secret, allowed or HMAC_ALGORITHMS)
            for i, (kid, secret) in enumerate(values["jwt_secrets"], start=1)])
    public_key = values["jwt_public_key"]
    if public_key:
        source = "JWT_PUBLIC_KEY_FILE" if key_file else "JWT_PUBLIC_KEY"
        _key_or_config_error(source, lambda: pem_keys(source, public_key, allowed))
    if values["jwt_jwks_url"].startswith("file:"):
        values["jwt_jwks_document"] = _read_jwks_file(values["jwt_jwks_url"], allowed)
    has_key = bool(values["jwt_secret"] or values["jwt_secrets"] or public_key or values["jwt_jwks_url"])
    if not has_key:
        if not dev:
            raise ConfigError(
                "JWT_SECRET: not set. The gateway refuses to start without a way to verify tokens: "
                "set JWT_SECRET (HS256, 32+ random bytes, e.g. `openssl rand -hex 32`), "
                "JWT_PUBLIC_KEY / JWT_PUBLIC_KEY_FILE (RS256/ES256) or JWT_JWKS_URL, "
                "or run `gateway --dev` to try it out"
            )
        values["jwt_secret"] = secrets.token_urlsafe(48)
        values["jwt_secret_generated"] = True


def _key_or_config_error(setting: str, load: Callable[[], object]) -> None:
    try:
        load()
    except AlgorithmMismatch as exc:
        raise ConfigError(f"JWT_ALGORITHMS: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def _read_jwks_file(url: str, allowed: frozenset[str] | None) -> bytes:
    path = unquote(urlparse(url).path)
    try:
        document = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"JWT_JWKS_URL: cannot read {path}: {exc.strerror}") from None
    try:
        result = jwks_keys(document, allowed, allow_secrets=True, min_secret_bytes=MIN_SECRET_BYTES)
    except ValueError as exc:
        raise ConfigError(f"JWT_JWKS_URL: {path}: {exc}") from None
    if not result.keys:
        why = f" ({'; '.join(result.problems)})" if result.problems else ""
        raise ConfigError(f"JWT_JWKS_URL: {path} holds no key the gateway can verify with{why}")
    return document


def _refuse_weak_credentials(values: dict[str, Any]) -> None:
    """Outside --dev: no credential copied from the repository's examples, none too short."""
    hmac_secrets = [("JWT_SECRET", values["jwt_secret"])] if values["jwt_secret"] else []
    hmac_secrets += [(f"JWT_SECRETS (item {i})", s) for i, (_, s) in enumerate(values["jwt_secrets"], 1)]
    others = [("PUBLISH_API_KEY", values["publish_api_key"])] if values["publish_api_key"] else []
    others += [(f"REDIS_URL ({where})", password) for where, password in _url_passwords(values["redis_url"])]
    for name, value in hmac_secrets + others:
        if value in EXAMPLE_SECRETS:
            raise ConfigError(
                f"{name}: this value is a public example from the repository (docker-compose.yml, "
                "deploy/k8s/secret.example.yaml, the docs), so anyone may know it. Generate your own "
                "(e.g. `openssl rand -hex 32`) and keep it in your secret store; `gateway --dev` accepts "
                "it for a local try")
    for name, value in hmac_secrets:
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"{name}: {len(value.encode())} bytes; use at least {MIN_SECRET_BYTES} random "
                              "bytes (e.g. `openssl rand -hex 32`): a short HMAC key can be brute-forced "
                              "from one token")
    key = values["publish_api_key"]
    if key and len(key.encode()) < MIN_PUBLISH_KEY_BYTES:
        raise ConfigError(f"PUBLISH_API_KEY: {len(key.encode())} bytes; use at least {MIN_PUBLISH_KEY_BYTES} "
                          "random bytes (e.g. `openssl rand -hex 24`)")


def _url_passwords(url: str) -> list[tuple[str, str]]:
    """Every password a Redis URL carries: userinfo, `?password=`, `?sentinel_password=`."""
    if not url:
        return []
    parsed = urlparse(url)
    out = [("password", unquote(parsed.password))] if parsed.password else []
    for key, found in parse_qs(parsed.query, keep_blank_values=False).items():
        if key.endswith("password"):
            out += [(key, value) for value in found]
    return out


def settings_table() -> str:
    """The README's settings table, in Markdown (a test keeps the README equal to it)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {s.doc} |")
    return "\n".join(rows)
