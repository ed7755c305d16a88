"""publisher.transports without a Redis: every REDIS_URL form gets its transport, and the
publisher's `client` exists where there is one client."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio

from publisher import AsyncPublisher, Publisher
from publisher.cluster import AsyncClusterTransport, SyncClusterTransport
from publisher.transports import (
    AsyncRunner,
    AsyncStandaloneTransport,
    StandaloneTransport,
    SyncRunner,
    async_transport,
    async_transport_for,
    sync_transport,
    sync_transport_for,
)

STANDALONE = [
    "redis://127.0.0.1:1/0",
    "rediss://:hunter2@127.0.0.1:1/2",
    "unix:///tmp/nowhere.sock?db=1",
    "redis+sentinel://:hunter2@127.0.0.1:1,127.0.0.1:2/0/mymaster",
]
CLUSTER = ["redis+cluster://127.0.0.1:1,127.0.0.1:2", "rediss+cluster://:hunter2@127.0.0.1:1"]


@pytest.mark.parametrize("url", STANDALONE)
def test_a_single_redis_gets_a_standalone_transport(url: str) -> None:
    runner: SyncRunner = sync_transport(url, retries=0, socket_timeout=0.5)
    assert isinstance(runner, StandaloneTransport)
    assert runner.owns_client
    assert "hunter2" not in runner.where
    assert runner.where.partition("://")[0] == url.partition("://")[0]
    runner.close()


@pytest.mark.parametrize("url", CLUSTER)
def test_a_cluster_gets_a_cluster_transport(url: str) -> None:
    runner: SyncRunner = sync_transport(url, retries=2, socket_timeout=0.5)
    assert isinstance(runner, SyncClusterTransport)
    assert runner.target.tls is url.startswith("rediss")
    assert "hunter2" not in runner.where
    runner.close()


@pytest.mark.parametrize("url", STANDALONE + CLUSTER)
async def test_async_transports(url: str) -> None:
    runner: AsyncRunner = async_transport(url)
    kind = AsyncClusterTransport if "+cluster" in url else AsyncStandaloneTransport
    assert isinstance(runner, kind)
    await runner.close()


@pytest.mark.parametrize(("url", "words"), [
    ("http://x", "unsupported scheme 'http'"),
    ("redis+cluster://a/5", "database 0 only"),
    ("redis+cluster://a?frob=1", "unknown option 'frob'"),
    ("", "empty"),
])
def test_bad_urls_are_value_errors(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        sync_transport(url)
    with pytest.raises(ValueError, match=words):
        async_transport(url)


@pytest.mark.parametrize("retries", [-1, 11, True, 1.5])
def test_retries_are_checked(retries: object) -> None:
    with pytest.raises(ValueError, match="retries must be"):
        sync_transport("redis://127.0.0.1:1", retries=retries)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries must be"):
        sync_transport("redis+cluster://127.0.0.1:1", retries=retries)  # type: ignore[arg-type]


def test_options_that_name_one_node_do_not_apply_to_a_cluster() -> None:
    with pytest.raises(TypeError, match="does not apply to a cluster"):
        sync_transport("redis+cluster://127.0.0.1:1", db=2)


async def test_a_given_client_is_left_open() -> None:
    client = redis.Redis(port=1)
    runner = sync_transport_for(client)
    assert runner.where == "localhost:1"
    assert not runner.owns_client
    runner.close()
    aclient = redis.asyncio.Redis(port=1)
    arunner = async_transport_for(aclient)
    assert not arunner.owns_client
    await arunner.close()
    client.close()
    await aclient.aclose()


def test_publisher_client_exists_for_a_single_redis_only() -> None:
    with Publisher("redis://127.0.0.1:1/0") as pub:
        assert isinstance(pub.client, redis.Redis)
        assert pub.where == "redis://127.0.0.1:1/0"
    with Publisher("redis+cluster://127.0.0.1:1") as pub:
        with pytest.raises(AttributeError, match="redis\\+cluster:// publisher has no single Redis client"):
            _ = pub.client
        assert pub.where == "redis+cluster://127.0.0.1:1"
    given = redis.Redis(port=1)
    with Publisher(client=given) as pub:
        assert pub.client is given
    given.close()


async def test_async_publisher_client() -> None:
    async with AsyncPublisher("redis://127.0.0.1:1/0") as pub:
        assert isinstance(pub.client, redis.asyncio.Redis)
    async with AsyncPublisher("redis+cluster://127.0.0.1:1") as apub:
        with pytest.raises(AttributeError, match="no single Redis client"):
            _ = apub.client


def test_a_url_or_a_client_not_both() -> None:
    client = redis.Redis(port=1)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher("redis://127.0.0.1:1", client=client)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher()
    client.close()
