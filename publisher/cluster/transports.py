"""The cluster transports: `SyncClusterTransport` and `AsyncClusterTransport`, the round trips.

Each sends a `routing._Run`'s groups to their nodes through the topology's per-node
`script_runner` transports, and waits between rounds as that policy says. The script sending
(EVAL the first time on a node, EVALSHA after, NOSCRIPT answered again) is here: it is what
each round trip carries. See the `publisher.cluster` package doc for what `run` promises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
from redis.exceptions import ResponseError

from publisher.cluster.routing import _Lost, _Run
from publisher.cluster.slots import _slot_of
from publisher.cluster.topology import AsyncClusterTopology, ClusterTopology
from publisher.cluster.urls import ClusterTarget, NodeAddress
from publisher.commands import Call, pack
from publisher.errors import PublisherError, PublishError
from publisher.script_runner import _RETRYABLE, _missing_scripts, backoff, check_retries

__all__ = ["AsyncClusterTransport", "SyncClusterTransport"]

_ASKING: Final = pack(("ASKING",))

T = TypeVar("T")


def _packed(calls: Sequence[Call], asking: bool, whole: Callable[[Call], bool]) -> bytes:
    parts: list[bytes] = []
    for call in calls:
        if asking:
            parts.append(_ASKING)
        parts.append(call.eval_packed() if whole(call) else call.packed)
    return b"".join(parts)


class SyncClusterTransport:
    """Runs calls on a Redis Cluster for a sync publisher: `SyncTransport`'s interface.

    Made from a `ClusterTarget` and redis-py options for every node's client; or from a
    `topology=` of your own (then its clients' options are that topology's). Safe to share
    between threads; each node costs one connection per concurrent caller.
    """

    sharded = True  # a publish call carries events of one slot

    def __init__(self, target: ClusterTarget, *, retries: int = 3, where: str | None = None,
                 topology: ClusterTopology | None = None, **redis_options: Any) -> None:
        self.topology = topology if topology is not None else ClusterTopology(target, **redis_options)
        self.target = self.topology.target
        self.where = where or target.where
        self._retries = check_retries(retries)

    def node_client(self, node: NodeAddress) -> redis.Redis:
        """The pooled redis-py client to `node`, shared with `run` (closed by `close()`)."""
        return self.topology.client(node)

    def primaries(self) -> tuple[NodeAddress, ...]:
        """The primaries serving slots, fetching the map first if there is none yet."""
        if not self.topology.loaded:
            self.topology.refresh_from(0)
        return self.topology.primaries()

    def for_each_primary(self, fn: Callable[[NodeAddress], T]) -> dict[NodeAddress, T]:
        """`fn(node)` for every primary, one after another; their results by node."""
        return {node: fn(node) for node in self.primaries()}

    def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        transport = self.topology.transport(node)
        known = self.topology.loaded_scripts.setdefault(node, set())
        learn = asking or any(call.script.sha not in known for call in calls)
        if learn:
            packed = _packed(calls, asking, lambda call: call.script.sha not in known)
        else:
            packed = b"".join([call.packed for call in calls])
        replies = transport.roundtrip(packed, len(calls) * (2 if asking else 1))
        if asking:
            replies = replies[1::2]
        missing = _missing_scripts(replies)
        if missing:  # the node restarted or flushed its scripts: EVAL caches them again
            try:
                again = transport.roundtrip(
                    _packed([calls[i] for i in missing], asking, lambda _call: True),
                    len(missing) * (2 if asking else 1))
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
            else:
                again = again[1::2] if asking else again
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
            learn = True
        if learn:
            for call, reply in zip(calls, replies, strict=True):
                if not isinstance(reply, ResponseError | _Lost):
                    known.add(call.script.sha)
        return replies

    def _round(self, state: _Run) -> None:
        topology = self.topology
        if state.refresh or not topology.loaded:
            topology.refresh_from(state.seen)
        state.next_round(topology)
        for node, asking, indexes in state.route(topology):
            try:
                replies = self._send(node, asking, [state.calls[i] for i in indexes])
            except _RETRYABLE as exc:
                topology.forget(node)
                state.lost(node, indexes, exc)
            else:
                state.settle(node, indexes, replies)

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order (see the `publisher.cluster` package doc for routing
        and retries)."""
        topology = self.topology
        if len(calls) == 1 and topology.loaded:  # a web request's emit: no planning
            slot = _slot_of(calls[0])
            node = topology.node_for_slot(slot) if slot is not None else None
            if node is not None:
                seen = topology.version
                try:
                    replies = self._send(node, False, calls)
                except _RETRYABLE as exc:
                    topology.forget(node)
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.lost(node, (0,), exc)
                else:
                    if not isinstance(replies[0], ResponseError | _Lost):
                        return replies
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.settle(node, (0,), replies)
                return self._finish(state)
        return self._finish(_Run(calls, self.target, self.where))

    def _finish(self, state: _Run) -> list[Any]:
        attempt = 0
        while True:
            if state.fatal is not None or not state.pending:
                return state.result()
            if state.wait:
                if attempt >= self._retries:
                    raise state.give_up(attempt + 1) from state.error
                time.sleep(backoff(attempt))
                attempt += 1
            try:
                self._round(state)
            except PublisherError:  # a refusal, already explained
                raise
            except _RETRYABLE as exc:  # no node gave a map
                state.error, state.error_at, state.wait = exc, self.where, True
            except redis.RedisError as exc:
                raise PublishError(f"Redis Cluster at {self.where} failed: {exc}") from exc

    def close(self) -> None:
        """Close every node's client (the transport owns them)."""
        self.topology.close()


class AsyncClusterTransport:
    """`SyncClusterTransport` for asyncio: `AsyncTransport`'s interface; the round trips of one
    `run` to different primaries go concurrently."""

    sharded = True

    def __init__(self, target: ClusterTarget, *, retries: int = 3, where: str | None = None,
                 topology: AsyncClusterTopology | None = None, **redis_options: Any) -> None:
        self.topology = topology if topology is not None else AsyncClusterTopology(target, **redis_options)
        self.target = self.topology.target
        self.where = where or target.where
        self._retries = check_retries(retries)

    def node_client(self, node: NodeAddress) -> redis.asyncio.Redis:
        """See `SyncClusterTransport.node_client`."""
        return self.topology.client(node)

    async def primaries(self) -> tuple[NodeAddress, ...]:
        """See `SyncClusterTransport.primaries`."""
        if not self.topology.loaded:
            await self.topology.refresh_from(0)
        return self.topology.primaries()

    async def for_each_primary(self, fn: Callable[[NodeAddress], Awaitable[T]]) -> dict[NodeAddress, T]:
        """`fn(node)` for every primary, concurrently; their results by node. For the gateway's
        own connections per shard: `node.client_kwargs()` has what one needs."""
        nodes = await self.primaries()
        results = await asyncio.gather(*(fn(node) for node in nodes))
        return dict(zip(nodes, results, strict=True))

    async def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        transport = self.topology.transport(node)
        known = self.topology.loaded_scripts.setdefault(node, set())
        learn = asking or any(call.script.sha not in known for call in calls)
        if learn:
            packed = _packed(calls, asking, lambda call: call.script.sha not in known)
        else:
            packed = b"".join([call.packed for call in calls])
        replies = await transport.roundtrip(packed, len(calls) * (2 if asking else 1))
        if asking:
            replies = replies[1::2]
        missing = _missing_scripts(replies)
        if missing:
            try:
                again = await transport.roundtrip(
                    _packed([calls[i] for i in missing], asking, lambda _call: True),
                    len(missing) * (2 if asking else 1))
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
            else:
                again = again[1::2] if asking else again
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
            learn = True
        if learn:
            for call, reply in zip(calls, replies, strict=True):
                if not isinstance(reply, ResponseError | _Lost):
                    known.add(call.script.sha)
        return replies

    async def _round(self, state: _Run) -> None:
        topology = self.topology
        if state.refresh or not topology.loaded:
            await topology.refresh_from(state.seen)
        state.next_round(topology)
        groups = state.route(topology)
        if len(groups) == 1:  # the common case: no task to make
            node, asking, indexes = groups[0]
            outcomes: list[Any] = []
            try:
                outcomes.append(await self._send(node, asking, [state.calls[i] for i in indexes]))
            except _RETRYABLE as exc:
                outcomes.append(exc)
        else:
            outcomes = await asyncio.gather(
                *(self._send(node, asking, [state.calls[i] for i in indexes])
                  for node, asking, indexes in groups),
                return_exceptions=True)
        for (node, _asking, indexes), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, _RETRYABLE):
                topology.forget(node)
                state.lost(node, indexes, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                state.settle(node, indexes, outcome)

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """See `SyncClusterTransport.run`."""
        topology = self.topology
        if len(calls) == 1 and topology.loaded:
            slot = _slot_of(calls[0])
            node = topology.node_for_slot(slot) if slot is not None else None
            if node is not None:
                seen = topology.version
                try:
                    replies = await self._send(node, False, calls)
                except _RETRYABLE as exc:
                    topology.forget(node)
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.lost(node, (0,), exc)
                else:
                    if not isinstance(replies[0], ResponseError | _Lost):
                        return replies
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.settle(node, (0,), replies)
                return await self._finish(state)
        return await self._finish(_Run(calls, self.target, self.where))

    async def _finish(self, state: _Run) -> list[Any]:
        attempt = 0
        while True:
            if state.fatal is not None or not state.pending:
                return state.result()
            if state.wait:
                if attempt >= self._retries:
                    raise state.give_up(attempt + 1) from state.error
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            try:
                await self._round(state)
            except PublisherError:
                raise
            except _RETRYABLE as exc:
                state.error, state.error_at, state.wait = exc, self.where, True
            except redis.RedisError as exc:
                raise PublishError(f"Redis Cluster at {self.where} failed: {exc}") from exc

    async def close(self) -> None:
        """See `SyncClusterTransport.close`."""
        await self.topology.close()
