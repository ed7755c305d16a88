"""The slot map kept fresh (CLUSTER SLOTS), and one redis-py client per node: sync and asyncio.

The I/O half of `slots.SlotMap`: which nodes to ask, with what client options, under which
lock. Kept apart from the transports: a transport is handed one (`topology=`), or makes its
own, and reaches the nodes through it (`node_client`, `for_each_primary`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from publisher.cluster.slots import SlotMap
from publisher.cluster.urls import ClusterTarget, NodeAddress
from publisher.commands import pack
from publisher.redis_url import DEFAULT_OPTIONS
from publisher.script_runner import _RETRYABLE, AsyncTransport, SyncTransport

__all__ = ["AsyncClusterTopology", "ClusterTopology"]

_CLUSTER_SLOTS: Final = pack(("CLUSTER", "SLOTS"))


def _options(target: ClusterTarget, redis_options: Mapping[str, Any], retry: Any
             ) -> tuple[ClusterTarget, dict[str, Any]]:
    """The target (keyword credentials win over the URL's) and each node client's options:
    the defaults of `publisher.redis_url`, then the URL's query, then the keywords."""
    options = {**DEFAULT_OPTIONS, **target.options, **redis_options}
    for name in ("host", "port", "db", "path", "ssl", "connection_pool", "url"):
        if name in options:
            raise TypeError(f"{name}= does not apply to a cluster: every node's comes from the URL and the map")
    if "username" in options or "password" in options:
        target = replace(target, username=options.pop("username", target.username),
                         password=options.pop("password", target.password))
    tls_options = {name: options.pop(name) for name in list(options) if name.startswith("ssl_")}
    if tls_options:  # in each NodeAddress, for whoever connects to a node
        target = replace(target, options=MappingProxyType({**target.options, **tls_options}))
    # Retries are ours alone (bounded, documented): redis-py's would multiply them.
    options.setdefault("retry", retry)
    return target, options


class ClusterTopology(SlotMap):
    """The slot map of a cluster, and one redis-py client per node it has talked to (sync).

    A node's client and its `SyncTransport` are made on first use and kept until `close()`.
    Safe to share between threads.
    """

    def __init__(self, target: ClusterTarget, **redis_options: Any) -> None:
        target, self._client_options = _options(
            target, redis_options, redis.retry.Retry(NoBackoff(), 0))
        super().__init__(target)
        self._nodes: dict[NodeAddress, SyncTransport] = {}
        self._pid = os.getpid()
        self._making = threading.Lock()
        self._refreshing = threading.Lock()

    def _locks(self) -> None:
        """After a fork, locks of the child's own: the parent's may have been held at the fork
        by a thread the child does not have. (Each node's transport makes its own connections.)"""
        if self._pid != os.getpid():
            self._making, self._refreshing, self._pid = threading.Lock(), threading.Lock(), os.getpid()

    def transport(self, node: NodeAddress) -> SyncTransport:
        """The transport to `node` (its kept connections), made on first use."""
        found = self._nodes.get(node)
        if found is not None:
            return found
        self._locks()
        with self._making:
            found = self._nodes.get(node)
            if found is None:
                client = redis.Redis(**{**self._client_options, **node.client_kwargs()})
                found = SyncTransport(client, retries=0, where=f"{node} ({self.target.where})")
                self.loaded_scripts[node] = set()
                self._nodes[node] = found
            return found

    def client(self, node: NodeAddress) -> redis.Redis:
        """The pooled client to `node` (made on first use, closed by `close()`)."""
        return self.transport(node).client

    def refresh(self) -> None:
        """Ask the known nodes, then the seeds, for the slot map; the first answer wins.

        `ClusterModeError` if a node has no cluster support, `ClusterUnreachable` (a
        `redis.ConnectionError`) if none answers.
        """
        errors: list[str] = []
        for node in self._candidates():
            try:
                reply = self.transport(node).roundtrip(_CLUSTER_SLOTS, 1)[0]
            except _RETRYABLE as exc:
                self._failed(node, exc, errors)
                continue
            if self._take(node, reply, errors):
                return
        raise self._nobody(errors)

    def refresh_from(self, version: int) -> None:
        """`refresh()`, unless another caller did since the map `version` was read."""
        self._locks()
        with self._refreshing:
            if self.version == version:
                self.refresh()

    def close(self) -> None:
        """Close every node's client."""
        with self._making:
            nodes, self._nodes = list(self._nodes.values()), {}
        for transport in nodes:
            transport.close()
            transport.client.close()


class AsyncClusterTopology(SlotMap):
    """`ClusterTopology` for asyncio: the same map, redis.asyncio clients, awaitable refresh."""

    def __init__(self, target: ClusterTarget, **redis_options: Any) -> None:
        target, self._client_options = _options(
            target, redis_options, redis.asyncio.retry.Retry(NoBackoff(), 0))
        super().__init__(target)
        self._nodes: dict[NodeAddress, AsyncTransport] = {}
        self._refreshing: asyncio.Lock | None = None

    def transport(self, node: NodeAddress) -> AsyncTransport:
        """See `ClusterTopology.transport` (no lock: made without awaiting)."""
        found = self._nodes.get(node)
        if found is None:
            client = redis.asyncio.Redis(**{**self._client_options, **node.client_kwargs()})
            found = AsyncTransport(client, retries=0, where=f"{node} ({self.target.where})")
            self.loaded_scripts[node] = set()
            self._nodes[node] = found
        return found

    def client(self, node: NodeAddress) -> redis.asyncio.Redis:
        return self.transport(node).client

    async def refresh(self) -> None:
        """See `ClusterTopology.refresh`."""
        errors: list[str] = []
        for node in self._candidates():
            try:
                reply = (await self.transport(node).roundtrip(_CLUSTER_SLOTS, 1))[0]
            except _RETRYABLE as exc:
                self._failed(node, exc, errors)
                continue
            if self._take(node, reply, errors):
                return
        raise self._nobody(errors)

    async def refresh_from(self, version: int) -> None:
        """See `ClusterTopology.refresh_from`."""
        if self._refreshing is None:  # made here: bound to the loop that runs us
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if self.version == version:
                await self.refresh()

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for transport in nodes:
            await transport.close()
            await transport.client.aclose()

