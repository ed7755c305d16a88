"""One factory for every REDIS_URL: the transport that runs script calls there.

    runner = sync_transport(os.environ["REDIS_URL"], retries=3)   # async_transport: awaitable
    replies = runner.run(calls)                                    # in call order
    runner.close()

- `redis://`, `rediss://`, `unix://`, `redis+sentinel://`: a `StandaloneTransport`
  (`AsyncStandaloneTransport`), one round trip per `run`;
- `redis+cluster://`, `rediss+cluster://`: a `publisher.cluster.SyncClusterTransport`
  (`AsyncClusterTransport`), one round trip per primary per `run`.

The publisher and the gateway both build theirs here, so a URL means the same thing to both.
Both kinds satisfy `SyncRunner` (`AsyncRunner`): `run(calls)`, `close()`, `where`. The same
delivery, retry and refusal rules hold for both (`publisher.script_runner`, `publisher.cluster`).

A standalone transport refuses a cluster node: before its first call it asks the node (INFO
cluster, once per transport) and, if the node runs with cluster support, raises
`publisher.cluster.ClusterModeError` naming the `redis+cluster://` URL to write instead, on
that call and every later one. A plain URL at a cluster node would reach that node's slots
only: calls for other slots would fail one by one (MOVED), never all. `check_standalone()` asks
at once, for a caller that would rather fail at start. A Sentinel URL is not checked (Sentinel
does not monitor cluster nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from publisher.cluster import (
    AsyncClusterTransport,
    ClusterModeError,
    SyncClusterTransport,
    async_expect_standalone,
    expect_standalone,
    is_cluster_url,
    parse_cluster_url,
)
from publisher.commands import Call
from publisher.redis_url import async_client, redact, sentinel_clients, sync_client
from publisher.script_runner import _RETRYABLE, AsyncTransport, SyncTransport, check_retries, describe

__all__ = [
    "AsyncRunner",
    "AsyncStandaloneTransport",
    "StandaloneTransport",
    "SyncRunner",
    "async_transport",
    "async_transport_for",
    "sync_transport",
    "sync_transport_for",
]


class SyncRunner(Protocol):
    """What runs script calls for a sync publisher (or the gateway), whatever the URL."""

    @property
    def where(self) -> str:
        """Where it points, credentials masked: for messages."""
        ...

    @property
    def sharded(self) -> bool:
        """Whether the calls of one run may go to different nodes (a Redis Cluster): then a
        publish call carries the events of one slot only (`Commands.publish_all`)."""
        ...

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order; refusals and failures raised as `PublishError`."""
        ...

    def close(self) -> None:
        """Release what it holds (the clients it made)."""
        ...


class AsyncRunner(Protocol):
    """`SyncRunner` for asyncio."""

    @property
    def where(self) -> str:
        ...

    @property
    def sharded(self) -> bool:
        ...

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        ...

    async def close(self) -> None:
        ...


def _standalone_url(client: Any, url: str | None) -> str | None:
    """The URL a cluster-node refusal names (None: not checked, a Sentinel pool)."""
    pool = client.connection_pool
    if getattr(pool, "service_name", None) is not None:
        return None
    if url is not None:
        return url
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if "ssl" in type(pool.connection_class).__name__.lower() or kwargs.get("ssl") else "redis"
    host = kwargs.get("host", "localhost")
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class StandaloneTransport(SyncTransport):
    """`SyncTransport` on one Redis (redis://, rediss://, unix://, redis+sentinel://) that
    refuses a cluster node (see the module doc). `owns_client`: `close()` closes the client
    (and a Sentinel client's connections to the sentinels) too."""

    def __init__(self, client: redis.Redis, *, retries: int, where: str, url: str | None = None,
                 owns_client: bool = False) -> None:
        super().__init__(client, retries=retries, where=where)
        self.owns_client = owns_client
        self._url = _standalone_url(client, url)
        self._checked = self._url is None
        self._refusal: ClusterModeError | None = None

    def check_standalone(self) -> None:
        """Raise `ClusterModeError` if the Redis is a cluster node; asked once per transport.

        If Redis cannot be reached, nothing is decided (asked again next time); if it refuses
        both INFO and CLUSTER INFO (an ACL), it is taken for a single Redis.
        """
        if self._refusal is not None:
            raise self._refusal
        if self._checked or self._url is None:
            return
        try:
            expect_standalone(self.client, self._url)
        except ClusterModeError as exc:
            self._refusal = exc
            raise
        except ResponseError:
            pass
        except _RETRYABLE:
            return  # unreachable: `run` retries and explains; asked again on the next call
        self._checked = True

    def run(self, calls: Sequence[Call]) -> list[Any]:
        if not self._checked:
            self.check_standalone()
        return super().run(calls)

    def close(self) -> None:
        super().close()
        if self.owns_client:
            self.client.close()
            for sentinel in sentinel_clients(self.client):
                sentinel.close()


class AsyncStandaloneTransport(AsyncTransport):
    """`StandaloneTransport` for asyncio."""

    def __init__(self, client: redis.asyncio.Redis, *, retries: int, where: str,
                 url: str | None = None, owns_client: bool = False) -> None:
        super().__init__(client, retries=retries, where=where)
        self.owns_client = owns_client
        self._url = _standalone_url(client, url)
        self._checked = self._url is None
        self._refusal: ClusterModeError | None = None

    async def check_standalone(self) -> None:
        """See `StandaloneTransport.check_standalone`."""
        if self._refusal is not None:
            raise self._refusal
        if self._checked or self._url is None:
            return
        try:
            await async_expect_standalone(self.client, self._url)
        except ClusterModeError as exc:
            self._refusal = exc
            raise
        except ResponseError:
            pass
        except _RETRYABLE:
            return
        self._checked = True

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        if not self._checked:
            await self.check_standalone()
        return await super().run(calls)

    async def close(self) -> None:
        await super().close()
        if self.owns_client:
            await self.client.aclose()
            for sentinel in sentinel_clients(self.client):
                await sentinel.aclose()


def sync_transport(url: str, *, retries: int = 3, **redis_options: Any) -> SyncRunner:
    """The transport for `url`, any REDIS_URL form (see the module doc); it connects on first
    use. `retries`: attempts after the first (0 to 10). Other keywords go to the redis-py
    client of the Redis (or of each cluster node), over `publisher.redis_url`'s defaults; a
    `ValueError` names what is wrong with the URL. What it returns is a `StandaloneTransport`
    (its `client` is the redis-py client) or a `SyncClusterTransport` (a client per node):
    `isinstance` tells them apart."""
    retries = check_retries(retries)
    if is_cluster_url(url):
        return SyncClusterTransport(parse_cluster_url(url), retries=retries, **redis_options)
    # Retries are ours alone (bounded, documented): redis-py's would multiply them.
    redis_options.setdefault("retry", redis.retry.Retry(NoBackoff(), 0))
    client = sync_client(url, **redis_options)
    return StandaloneTransport(client, retries=retries, where=redact(url.strip()), url=url,
                               owns_client=True)


def async_transport(url: str, *, retries: int = 3, **redis_options: Any) -> AsyncRunner:
    """`sync_transport` for asyncio."""
    retries = check_retries(retries)
    if is_cluster_url(url):
        return AsyncClusterTransport(parse_cluster_url(url), retries=retries, **redis_options)
    redis_options.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
    client = async_client(url, **redis_options)
    return AsyncStandaloneTransport(client, retries=retries, where=redact(url.strip()), url=url,
                                    owns_client=True)


def sync_transport_for(client: redis.Redis, *, retries: int = 3) -> StandaloneTransport:
    """A transport on a redis-py client of the caller's (left open by `close()`)."""
    return StandaloneTransport(client, retries=check_retries(retries), where=describe(client))


def async_transport_for(client: redis.asyncio.Redis, *, retries: int = 3) -> AsyncStandaloneTransport:
    """`sync_transport_for` for asyncio."""
    return AsyncStandaloneTransport(client, retries=check_retries(retries), where=describe(client))
