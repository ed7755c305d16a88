"""publisher.redis_url: every supported URL form, and clear errors without credentials."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio

from publisher.redis_url import (
    DEFAULT_OPTIONS,
    SentinelTarget,
    async_client,
    parse_sentinel_url,
    redact,
    sync_client,
)
from publisher.script_runner import describe


def test_plain_urls_with_defaults() -> None:
    client = sync_client("redis://:pw@redis.example:6380/3")
    assert describe(client) == "redis.example:6380"
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "redis.example", 6380, 3, "pw")
    for key, value in DEFAULT_OPTIONS.items():
        assert kwargs[key] == value
    client.close()


def test_options_override_defaults() -> None:
    client = sync_client("redis://localhost/0", socket_timeout=None)
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None
    client.close()


def test_tls_and_unix() -> None:
    tls = sync_client("rediss://localhost:6390/0")
    assert "SSL" in tls.connection_pool.connection_class.__name__
    tls.close()
    unix = sync_client("unix:///run/redis.sock?db=2")
    assert describe(unix) == "unix:///run/redis.sock"
    assert unix.connection_pool.connection_kwargs["path"] == "/run/redis.sock"
    assert unix.connection_pool.connection_kwargs["db"] == 2
    unix.close()


async def test_async_client() -> None:
    client = async_client("redis://localhost:6390/1")
    assert isinstance(client, redis.asyncio.Redis)
    assert client.connection_pool.connection_kwargs["db"] == 1
    await client.aclose()


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://s1:26379,s2:26380/0/mymaster",
     SentinelTarget((("s1", 26379), ("s2", 26380)), "mymaster", 0)),
    ("redis+sentinel://s1/mymaster", SentinelTarget((("s1", 26379),), "mymaster", 0)),
    ("redis+sentinel://user:p%40ss@s1:1,[::1]:2/4/svc",
     SentinelTarget((("s1", 1), ("::1", 2)), "svc", 4, "user", "p@ss")),
    ("redis+sentinel://:pw@s1/0/m?sentinel_password=spw",
     SentinelTarget((("s1", 26379),), "m", 0, None, "pw", None, "spw")),
])
def test_sentinel_urls(url: str, expected: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == expected


def test_sentinel_clients() -> None:
    client = sync_client("redis+sentinel://:pw@127.0.0.1:1/2/mymaster")
    pool = client.connection_pool
    assert isinstance(client, redis.Redis)
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "pw")
    assert describe(client) == "the master of Sentinel service 'mymaster'"
    client.close()


async def test_async_sentinel_client() -> None:
    client = async_client("redis+sentinel://127.0.0.1:1/0/mymaster")
    assert client.connection_pool.service_name == "mymaster"  # type: ignore[attr-defined]
    await client.aclose()


@pytest.mark.parametrize(("url", "words"), [
    ("", "empty"),
    ("localhost:6379", "unsupported scheme ''"),
    ("http://localhost", "unsupported scheme 'http'"),
    ("redis://localhost:port/0", "Port could not be cast"),
    ("redis://localhost:70000/0", "Port out of range"),
    ("redis://localhost/zero", "must be a database number"),
    ("unix://", "no socket path"),
    ("redis+sentinel:///0/m", "no sentinel address"),
    ("redis+sentinel://s1:26379", "/db/service_name"),
    ("redis+sentinel://s1:26379/0", "/db/service_name"),
    ("redis+sentinel://s1:26379/0/m/x", "/db/service_name"),
    ("redis+sentinel://s1:x/0/m", "bad port"),
    ("redis+sentinel://:2/0/m", "has no host"),
    ("redis+sentinel://s1/0/m?ssl=true", "unknown option(s) ssl"),
])
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        sync_client(url)
    assert words in str(info.value)


def test_errors_and_redact_hide_passwords() -> None:
    with pytest.raises(ValueError, match=None) as info:
        sync_client("redis://user:hunter2@localhost:port/0")
    assert "hunter2" not in str(info.value)
    assert redact("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert redact("redis://:hunter2@h/0") == "redis://:***@h/0"
    assert redact("redis://h/0") == "redis://h/0"
    assert redact("redis+sentinel://:a@s1,s2/0/m?sentinel_password=b") == (
        "redis+sentinel://:***@s1,s2/0/m?sentinel_password=***")
    assert "hunter2" not in redact("unix:///s.sock?password=hunter2")
