"""Cluster or not: whether the Redis a client reaches runs with cluster support, and the error
when a URL's scheme says otherwise (`ClusterModeError`).

Apart from the slot map: it asks any Redis client, a plain `redis://` one included
(`expect_standalone` refuses a plain URL at a cluster node, which would reach that node's
slots only), and needs no map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import redis
import redis.asyncio
from redis.exceptions import ResponseError

from publisher.cluster.urls import cluster_url_for
from publisher.errors import PublishError
from publisher.redis_url import redact

__all__ = [
    "ClusterModeError",
    "async_expect_standalone",
    "async_is_cluster_node",
    "expect_standalone",
    "is_cluster_node",
]

# What a node without cluster support answers to a CLUSTER command (slots.SlotMap reads it too).
_DISABLED: Final = "cluster support disabled"


class ClusterModeError(PublishError):
    """The URL's scheme and the Redis it points at disagree: a `redis+cluster://` URL at a Redis
    without cluster support, or a plain `redis://` URL at a cluster node (where every call
    touching keys of another node's slots would fail). Not retried: the URL must change."""


def _cluster_enabled(info: Mapping[str, Any]) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def is_cluster_node(client: redis.Redis) -> bool:
    """Whether the Redis behind `client` runs with cluster support (INFO cluster says
    cluster_enabled:1). Where INFO is refused (some managed Redis rename it), CLUSTER INFO
    answers instead: only a node without cluster support refuses that."""
    try:
        return _cluster_enabled(client.info("cluster"))
    except ResponseError:
        try:
            client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if _DISABLED in str(exc):
                return False
            raise
        return True


async def async_is_cluster_node(client: redis.asyncio.Redis) -> bool:
    """See `is_cluster_node`."""
    try:
        return _cluster_enabled(await client.info("cluster"))
    except ResponseError:
        try:
            await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if _DISABLED in str(exc):
                return False
            raise
        return True


def _is_a_cluster(url: str) -> ClusterModeError:
    return ClusterModeError(
        f"{redact(url.strip())} points at a Redis Cluster node (cluster_enabled:1): a plain URL would "
        f"reach that node's slots only; write {cluster_url_for(url)} (add more nodes after a comma)"
    )


def expect_standalone(client: redis.Redis, url: str) -> None:
    """Raise `ClusterModeError` naming `redis+cluster://` if `url` (the client's, plain
    `redis://`, `rediss://` or Sentinel) leads to a cluster node."""
    if is_cluster_node(client):
        raise _is_a_cluster(url)


async def async_expect_standalone(client: redis.asyncio.Redis, url: str) -> None:
    """See `expect_standalone`."""
    if await async_is_cluster_node(client):
        raise _is_a_cluster(url)

