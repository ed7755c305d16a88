"""What one `run` has left to send, and where: the routing, redirection and retry policy
described in the `publisher.cluster` package doc, without I/O.

Kept apart from the transports so that the sync and the asyncio one share one policy (they
differ in how they wait and send only), and so that the policy can be tested with a fake
cluster and no connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from publisher.cluster.slots import SlotMap, _slot_of
from publisher.cluster.urls import ClusterTarget, NodeAddress
from publisher.commands import Call
from publisher.errors import PublishError
from publisher.script_runner import _failure, _refused

__all__ = ["MAX_REDIRECTS"]

MAX_REDIRECTS: Final = 5  # MOVED/ASK per call and run: more means the slots keep moving
_PENDING: Final = object()


class _Lost(NamedTuple):
    """In place of a reply: the connection failed before it came."""

    exc: BaseException


def _address(target: ClusterTarget, redirect: AskError, answered: NodeAddress) -> NodeAddress:
    return target.node(redirect.host or answered.host, redirect.port)


def _code(reply: ResponseError) -> str:
    for kind, code in ((MovedError, "MOVED"), (AskError, "ASK"), (TryAgainError, "TRYAGAIN"),
                       (ClusterDownError, "CLUSTERDOWN"), (ReadOnlyError, "READONLY")):
        if isinstance(reply, kind):
            return f"{code} {reply}"
    return str(reply)


class _Run:
    """What one `run` has left to send, and where: the policy, without I/O."""

    __slots__ = ("any_shift", "asks", "calls", "decided", "error", "error_at", "fatal", "moved",
                 "nodes", "pending", "redirects", "refresh", "replies", "seen", "slots", "target",
                 "wait", "where")

    def __init__(self, calls: Sequence[Call], target: ClusterTarget, where: str, *,
                 sent: int | None = None) -> None:
        """`sent`: the calls went once already, routed by that version of the map, and what
        came back is to be `settle`d."""
        self.calls = calls
        self.target = target
        self.where = where
        self.slots = [_slot_of(call) for call in calls]
        self.replies: list[Any] = [_PENDING] * len(calls)
        self.nodes: list[NodeAddress | None] = [None] * len(calls)  # who answered each
        self.pending = [] if sent is not None else list(range(len(calls)))
        self.redirects = [0] * len(calls)
        self.asks: dict[int, NodeAddress] = {}  # slot: where its calls go next, after ASKING
        self.moved: dict[int, NodeAddress] = {}  # slot: its owner, as a MOVED said
        self.decided: set[int | None] = set()  # slots whose first held-back call was seen
        self.refresh = False
        self.wait = False
        self.error: BaseException | None = None  # the last reason to retry
        self.error_at = ""
        self.fatal: PublishError | None = None
        self.any_shift = 0  # which primary takes the calls without keys
        self.seen = sent or 0  # the version of the map this round was routed by

    def route(self, topology: SlotMap) -> list[tuple[NodeAddress, bool, list[int]]]:
        """This round's groups: (node, after ASKING?, call indexes in order). Every held-back
        call of a slot goes the same way as the first, so a slot's calls stay in order."""
        # Grouped by the identity of the map's node objects (one per node in a map, so the same
        # groups as by address, and an int hashes faster than an address) and ASK targets.
        groups: dict[int, tuple[NodeAddress, bool, list[int]]] = {}
        self.seen = topology.version
        table = topology.table()
        primaries = topology.primaries()
        anywhere = primaries[self.any_shift % len(primaries)] if primaries else None
        asks, self.asks = self.asks, {}
        pending, self.pending = self.pending, []
        self.decided = set()
        slots = self.slots
        for i in pending:
            slot = slots[i]
            asking = False
            if slot is None:
                node = anywhere
            elif asks and slot in asks:
                node, asking = asks[slot], True
            else:
                node = table[slot]
            if node is None:
                self.error = ClusterDownError(
                    "no primary is known" if slot is None else f"no node serves slot {slot}")
                self.error_at = self.where
                self.pending.append(i)
                self.refresh = self.wait = True
                continue
            key = -id(node) if asking else id(node)
            group = groups.get(key)
            if group is None:
                groups[key] = group = (node, asking, [])
            group[2].append(i)
        return list(groups.values())

    def _hold(self, i: int) -> bool:
        """Keep call `i` for the next round; whether it is the first held back of its slot."""
        self.pending.append(i)
        slot = self.slots[i]
        first = slot not in self.decided
        self.decided.add(slot)
        return first

    def _redirected(self, i: int, node: NodeAddress, reply: AskError) -> None:
        self.redirects[i] += 1
        if self.redirects[i] > MAX_REDIRECTS and self.fatal is None:
            self.fatal = PublishError(
                f"Redis Cluster at {self.where}: call {i + 1} of {len(self.calls)} was redirected "
                f"more than {MAX_REDIRECTS} times, the last by {node} ({_code(reply)}); its slot "
                "keeps moving"
            )

    def lost(self, node: NodeAddress, indexes: Sequence[int], exc: BaseException) -> None:
        """The connection to `node` failed before these replies came."""
        for i in indexes:
            self._hold(i)
            if self.slots[i] is None:
                self.any_shift += 1
        self.error, self.error_at = exc, f"{node} ({self.where})"
        self.refresh = self.wait = True

    def settle(self, node: NodeAddress, indexes: Sequence[int], replies: Sequence[Any]) -> None:
        for i, reply in zip(indexes, replies, strict=True):
            if not isinstance(reply, ResponseError | _Lost):  # a result: the common case
                self.replies[i] = reply
                self.nodes[i] = node
            elif isinstance(reply, _Lost):
                self.lost(node, (i,), reply.exc)
            elif isinstance(reply, MovedError):
                self._hold(i)
                self._redirected(i, node, reply)
                self.moved[reply.slot_id] = _address(self.target, reply, node)
                self.refresh = True
            elif isinstance(reply, AskError):
                slot = self.slots[i]
                if self._hold(i) and slot is not None:
                    self.asks[slot] = _address(self.target, reply, node)
                self._redirected(i, node, reply)
            elif isinstance(reply, TryAgainError | ClusterDownError | ReadOnlyError):
                self._hold(i)
                self.error, self.error_at = reply, f"{node} ({self.where})"
                self.wait = True
                self.refresh = self.refresh or not isinstance(reply, TryAgainError)
            else:  # a refusal, raised by `result`
                self.replies[i] = reply
                self.nodes[i] = node

    def next_round(self, topology: SlotMap) -> None:
        """After the refresh, if any: the MOVED replies say who serves their slots now."""
        for slot, node in self.moved.items():
            if topology.node_for_slot(slot) != node:
                topology.assign(slot, node)
        self.moved = {}
        self.pending.sort()
        self.refresh = self.wait = False

    def _refusal(self, i: int, reply: ResponseError) -> PublishError:
        return _refused(f"{self.nodes[i]} ({self.where})", i, len(self.replies), reply)

    def _partial(self, error: PublishError) -> PublishError:
        """`error`, carrying what each call came to (`PublishError.replies`): the answered
        ones ran, and their callers are told so."""
        error.replies = [
            error if reply is _PENDING
            else self._refusal(i, reply) if isinstance(reply, ResponseError) else reply
            for i, reply in enumerate(self.replies)
        ]
        return error

    def result(self) -> list[Any]:
        if self.fatal is not None:
            raise self._partial(self.fatal)
        for i, reply in enumerate(self.replies):
            if isinstance(reply, ResponseError):
                raise self._partial(self._refusal(i, reply))
        return self.replies

    def give_up(self, attempts: int) -> PublishError:
        exc = self.error
        if isinstance(exc, ResponseError):
            return self._partial(PublishError(
                f"Redis Cluster at {self.where} still answered {_code(exc)} "
                f"after {attempts} attempt(s), the last from {self.error_at}"
            ))
        return self._partial(
            _failure(self.error_at or self.where, attempts, exc or RuntimeError("no reply")))
