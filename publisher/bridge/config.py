"""The bridge's settings: one typed object from the environment and flags, checked at start.

A bad value stops the start with `ConfigError`, whose message names the setting (its
environment name) and says what is wrong, as the gateway's settings do.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from publisher.cluster.urls import is_cluster_url, parse_cluster_url
from publisher.envelope import DEFAULT_CHANNEL_PREFIX, DEFAULT_KEY_PREFIX
from publisher.redis_url import redact, sync_client

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SOURCES = ("emitter", "python-socketio")


class ConfigError(ValueError):
    """A setting that cannot be used; the message starts with the setting's name."""


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    redis_url: str  # REDIS_URL: the bus, any form the publisher accepts
    channel_prefix: str  # CHANNEL_PREFIX: the bus's sharded channels, as the gateway's
    key_prefix: str  # KEY_PREFIX: the bus's keys, as the gateway's
    emitter_prefix: str  # BRIDGE_EMITTER_PREFIX: the emitter's `key` option
    socketio_channel: str  # BRIDGE_SOCKETIO_CHANNEL: python-socketio's `channel`
    sources: tuple[str, ...]  # BRIDGE_SOURCES
    port: int  # BRIDGE_PORT: /healthz, /readyz, /metrics
    host: str  # BRIDGE_HOST
    lease_ttl_ms: int  # BRIDGE_LEASE_TTL_MS
    lease_renew_ms: int  # BRIDGE_LEASE_RENEW_MS
    history_max_len: int  # HISTORY_MAX_LEN, as the gateway's
    recovery_window_s: float  # RECOVERY_WINDOW, as the gateway's
    bridge_id: str  # BRIDGE_ID: who holds the lease, in logs and in Redis
    log_level: str  # LOG_LEVEL

    @property
    def lease_key(self) -> str:
        """In its own slot: the lease is one key, whatever shard it lands on."""
        return f"{self.key_prefix}:{{bridge}}:lease"

    @property
    def where(self) -> str:
        return redact(self.redis_url)

    def public_view(self) -> dict[str, object]:
        """What the start-up log line shows: the URL with its credentials masked."""
        return {"redis_url": self.where, "channel_prefix": self.channel_prefix,
                "key_prefix": self.key_prefix, "emitter_prefix": self.emitter_prefix,
                "socketio_channel": self.socketio_channel, "sources": list(self.sources),
                "port": self.port, "lease_ttl_ms": self.lease_ttl_ms,
                "lease_renew_ms": self.lease_renew_ms, "bridge_id": self.bridge_id}


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range, expected {low} to {high}")
    return value


def _prefix(name: str, text: str, *, hash_ok: bool) -> str:
    if not text or text != text.strip() or any(c in text for c in "{}*?[]") or (not hash_ok and "#" in text):
        raise ConfigError(f"{name}: {text!r} must be a non-empty name without spaces, braces, "
                          "'*', '?', '[' or ']'" + ("" if hash_ok else " or '#'"))
    return text


def _url(text: str) -> str:
    url = text.strip()
    try:
        if is_cluster_url(url):
            parse_cluster_url(url)
        else:
            sync_client(url).close()  # parses it; connects only when used
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None
    return url


def _sources(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown or not chosen:
        raise ConfigError(f"BRIDGE_SOURCES: {text!r}: expected a comma-separated list of {', '.join(SOURCES)}")
    return chosen


def _window(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"RECOVERY_WINDOW: {text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise ConfigError(f"RECOVERY_WINDOW: {value} is out of range, expected 0 to 86400 seconds")
    return value


def load(values: Mapping[str, str | None], env: Mapping[str, str] | None = None) -> BridgeSettings:
    """Settings from `values` (the flags, by environment name; None: not given), then the
    environment, then the defaults."""
    env = os.environ if env is None else env

    def get(name: str, default: str) -> str:
        given = values.get(name)
        if given is not None:
            return given
        return env.get(name) or default

    ttl = _int("BRIDGE_LEASE_TTL_MS", get("BRIDGE_LEASE_TTL_MS", "5000"), 1000, 60_000)
    renew = _int("BRIDGE_LEASE_RENEW_MS", get("BRIDGE_LEASE_RENEW_MS", "1000"), 100, 30_000)
    if renew * 3 > ttl:
        raise ConfigError(f"BRIDGE_LEASE_RENEW_MS: {renew} ms must be at most a third of "
                          f"BRIDGE_LEASE_TTL_MS ({ttl} ms), or one slow renewal loses the lease")
    level = get("LOG_LEVEL", "info").strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL: {level!r}: expected debug, info, warning or error")
    settings = BridgeSettings(
        redis_url=_url(get("REDIS_URL", DEFAULT_REDIS_URL)),
        channel_prefix=_prefix("CHANNEL_PREFIX", get("CHANNEL_PREFIX", DEFAULT_CHANNEL_PREFIX), hash_ok=False),
        key_prefix=_prefix("KEY_PREFIX", get("KEY_PREFIX", DEFAULT_KEY_PREFIX), hash_ok=True),
        emitter_prefix=_prefix("BRIDGE_EMITTER_PREFIX", get("BRIDGE_EMITTER_PREFIX", "socket.io"), hash_ok=False),
        socketio_channel=_prefix("BRIDGE_SOCKETIO_CHANNEL", get("BRIDGE_SOCKETIO_CHANNEL", "socketio"), hash_ok=True),
        sources=_sources(get("BRIDGE_SOURCES", ",".join(SOURCES))),
        port=_int("BRIDGE_PORT", get("BRIDGE_PORT", "9100"), 0, 65_535),
        host=get("BRIDGE_HOST", "0.0.0.0").strip(),  # noqa: S104 - a container's probes come from outside
        lease_ttl_ms=ttl,
        lease_renew_ms=renew,
        history_max_len=_int("HISTORY_MAX_LEN", get("HISTORY_MAX_LEN", "1000"), 1, 10_000_000),
        recovery_window_s=_window(get("RECOVERY_WINDOW", "120")),
        bridge_id=get("BRIDGE_ID", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}").strip(),
        log_level=level,
    )
    if not settings.bridge_id or len(settings.bridge_id) > 200:
        raise ConfigError("BRIDGE_ID: must be 1 to 200 characters")
    if settings.socketio_channel.startswith(settings.emitter_prefix + "#"):
        raise ConfigError("BRIDGE_SOCKETIO_CHANNEL: must not be one of the emitter's channels "
                          f"({settings.emitter_prefix}#...)")
    return settings
