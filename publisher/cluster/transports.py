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
from publisher.cluster.slots import SlotMap, _slot_of
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


# What the sync and the asyncio transport share of a node's round trips, without I/O: each
# sends `_request`, then, if NOSCRIPT came back, `_reeval`, and `_merged` makes the replies.

def _request(known: set[str], asking: bool, calls: Sequence[Call]) -> tuple[bytes, int, bool]:
    """The bytes for `calls` to a node that has the scripts `known`, how many replies they
    bring, and whether the replies teach which scripts it has (EVAL or ASKING in them)."""
    count = len(calls) * (2 if asking else 1)
    if asking or any(call.script.sha not in known for call in calls):
        return _packed(calls, asking, lambda call: call.script.sha not in known), count, True
    return b"".join([call.packed for call in calls]), count, False


def _reeval(calls: Sequence[Call], missing: list[int], asking: bool) -> tuple[bytes, int]:
    """The calls answered NOSCRIPT, as EVAL (the node restarted or flushed its scripts)."""
    return (_packed([calls[i] for i in missing], asking, lambda _call: True),
            len(missing) * (2 if asking else 1))


def _unasked(replies: list[Any], asking: bool) -> list[Any]:
    """The calls' replies, without the ASKINGs'."""
    return replies[1::2] if asking else replies


def _merged(known: set[str], calls: Sequence[Call], replies: list[Any], learn: bool,
            missing: list[int], again: list[Any]) -> list[Any]:
    """`replies` with `again` (the `_reeval`'s) in place of the NOSCRIPTs; the scripts that ran
    added to `known`."""
    for i, reply in zip(missing, again, strict=True):
        replies[i] = reply
    if learn or missing:
        for call, reply in zip(calls, replies, strict=True):
            if not isinstance(reply, ResponseError | _Lost):
                known.add(call.script.sha)
    return replies


def _direct_node(topology: SlotMap, calls: Sequence[Call]) -> NodeAddress | None:
    """Where a lone call goes without planning (a web request's emit), if the map says."""
    if len(calls) != 1 or not topology.loaded:
        return None
    slot = _slot_of(calls[0])
    return topology.node_for_slot(slot) if slot is not None else None


def _settled(topology: SlotMap, state: _Run, node: NodeAddress, indexes: Sequence[int],
             outcome: list[Any] | BaseException) -> None:
    """What came back from `node` for the calls `indexes`: their replies, or the connection's
    failure (then the node is forgotten: asked last for a map, sent scripts whole again)."""
    if isinstance(outcome, BaseException):
        topology.forget(node)
        state.lost(node, indexes, outcome)
    else:
        state.settle(node, indexes, outcome)


def _resumed(transport: SyncClusterTransport | AsyncClusterTransport, calls: Sequence[Call],
             node: NodeAddress, seen: int, outcome: list[Any] | BaseException) -> _Run:
    """The `_Run` that takes over a lone call sent to `node` by map `seen`, after `outcome`
    (its replies, or the connection's failure) was not a result."""
    state = _Run(calls, transport.target, transport.where, sent=seen)
    _settled(transport.topology, state, node, (0,), outcome)
    return state


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
        packed, count, learn = _request(known, asking, calls)
        replies = _unasked(transport.roundtrip(packed, count), asking)
        missing = _missing_scripts(replies)
        again: list[Any] = []
        if missing:
            try:
                again = _unasked(transport.roundtrip(*_reeval(calls, missing, asking)), asking)
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
        return _merged(known, calls, replies, learn, missing, again)

    def _round(self, state: _Run) -> None:
        topology = self.topology
        if state.refresh or not topology.loaded:
            topology.refresh_from(state.seen)
        state.next_round(topology)
        for node, asking, indexes in state.route(topology):
            try:
                outcome: list[Any] | BaseException = self._send(
                    node, asking, [state.calls[i] for i in indexes])
            except _RETRYABLE as exc:
                outcome = exc
            _settled(topology, state, node, indexes, outcome)

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order (see the `publisher.cluster` package doc for routing
        and retries)."""
        node = _direct_node(self.topology, calls)
        if node is None:
            return self._finish(_Run(calls, self.target, self.where))
        seen = self.topology.version
        try:
            replies = self._send(node, False, calls)
        except _RETRYABLE as exc:
            return self._finish(_resumed(self, calls, node, seen, exc))
        if not isinstance(replies[0], ResponseError | _Lost):
            return replies
        return self._finish(_resumed(self, calls, node, seen, replies))

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
        packed, count, learn = _request(known, asking, calls)
        replies = _unasked(await transport.roundtrip(packed, count), asking)
        missing = _missing_scripts(replies)
        again: list[Any] = []
        if missing:
            try:
                again = _unasked(await transport.roundtrip(*_reeval(calls, missing, asking)), asking)
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
        return _merged(known, calls, replies, learn, missing, again)

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
            if isinstance(outcome, BaseException) and not isinstance(outcome, _RETRYABLE):
                raise outcome
            _settled(topology, state, node, indexes, outcome)

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """See `SyncClusterTransport.run`."""
        node = _direct_node(self.topology, calls)
        if node is None:
            return await self._finish(_Run(calls, self.target, self.where))
        seen = self.topology.version
        try:
            replies = await self._send(node, False, calls)
        except _RETRYABLE as exc:
            return await self._finish(_resumed(self, calls, node, seen, exc))
        if not isinstance(replies[0], ResponseError | _Lost):
            return replies
        return await self._finish(_resumed(self, calls, node, seen, replies))

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
