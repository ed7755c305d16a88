"""Key slots and the slot map: which primary serves each of the 16384 slots, as a node said.

No I/O here: `SlotMap` takes the replies to CLUSTER SLOTS and MOVED that `topology` gets, and
answers `routing` (which node serves a slot, whom to ask for the next map). Kept apart so that
the map's rules can be read, and tested, without a connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
from redis.crc import key_slot as _crc16_slot
from redis.exceptions import ResponseError

from publisher.cluster.mode import _DISABLED, ClusterModeError
from publisher.cluster.urls import ClusterTarget, NodeAddress
from publisher.commands import Call
from publisher.errors import PublishError

__all__ = ["SLOTS", "ClusterUnreachable", "SlotMap", "key_slot"]

SLOTS: Final = 16384


class ClusterUnreachable(redis.ConnectionError):
    """No node of the cluster answered CLUSTER SLOTS. A connection error, so that a `run`
    retries it within its budget (the cluster may be restarting)."""


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (or shard channel): CRC16 of its hash tag `{...}` if it has a
    non-empty one, else of the whole key, modulo 16384, as CLUSTER KEYSLOT says."""
    return _crc16_slot(key.encode() if isinstance(key, str) else key)


def _slot_of(call: Call) -> int | None:
    """The slot of a call's first key; None for a call without keys."""
    args = call.args
    if not args or int(args[0]) == 0:
        return None
    key = args[1]
    return _crc16_slot(key.encode() if isinstance(key, str) else b"%d" % key if isinstance(key, int) else key)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class SlotMap:
    """Which primary serves each slot, and the replicas of each primary, as a node said.

    Readers (any thread or task) see a whole map: a refresh replaces it in one assignment.
    """

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        self.version = 0  # how many maps were taken; 0: none yet
        self._slots: list[NodeAddress | None] = [None] * SLOTS
        self._primaries: tuple[NodeAddress, ...] = ()
        self._replicas: Mapping[NodeAddress, tuple[NodeAddress, ...]] = {}
        self._answered: NodeAddress | None = None  # the node that gave the map
        self._suspects: dict[NodeAddress, None] = {}  # failed lately: asked last
        # SHA1s of the scripts each node ran for us: sent by EVALSHA there, others by EVAL
        self.loaded_scripts: dict[NodeAddress, set[str]] = {}

    @property
    def loaded(self) -> bool:
        return self.version > 0

    def node_for_slot(self, slot: int) -> NodeAddress | None:
        """The primary serving `slot`, or None when no node does (or no map yet)."""
        return self._slots[slot]

    def table(self) -> Sequence[NodeAddress | None]:
        """The primary of every slot, as the map is now: never changed, replaced by a refresh."""
        return self._slots

    def primaries(self) -> tuple[NodeAddress, ...]:
        """The primaries serving slots, in the order of their first slot."""
        return self._primaries

    def replicas_of(self, node: NodeAddress) -> tuple[NodeAddress, ...]:
        return self._replicas.get(node, ())

    def slots_of(self, node: NodeAddress) -> list[tuple[int, int]]:
        """The slot ranges (inclusive) that `node` serves."""
        ranges: list[tuple[int, int]] = []
        slots = self._slots
        start = None
        for slot in range(SLOTS + 1):
            mine = slot < SLOTS and slots[slot] == node
            if mine and start is None:
                start = slot
            elif not mine and start is not None:
                ranges.append((start, slot - 1))
                start = None
        return ranges

    def apply_slots(self, reply: Any, asked: NodeAddress) -> bool:
        """Take the map from `asked`'s CLUSTER SLOTS reply; False if it serves no slot yet."""
        slots: list[NodeAddress | None] = [None] * SLOTS
        replicas: dict[NodeAddress, dict[NodeAddress, None]] = {}
        made: dict[NodeAddress, NodeAddress] = {}  # one object per node: `_Run.route` groups by it

        def address(entry: Sequence[Any]) -> NodeAddress:
            host = _text(entry[0]) if entry[0] is not None else ""
            # "" or "?": the node does not know how it is reached; as we reached the one asked
            node = self.target.node(asked.host if host in {"", "?"} else host, int(entry[1]))
            return made.setdefault(node, node)

        for item in reply or ():
            start, end, primary = int(item[0]), int(item[1]), address(item[2])
            if not 0 <= start <= end < SLOTS:
                raise ValueError(f"{asked} answered CLUSTER SLOTS with the range {start}-{end}")
            slots[start:end + 1] = [primary] * (end - start + 1)
            known = replicas.setdefault(primary, {})
            for entry in item[3:]:
                known[address(entry)] = None
        if not replicas:
            return False
        primaries: dict[NodeAddress, None] = {}
        for node in slots:
            if node is not None:
                primaries[node] = None
        self._slots, self._primaries = slots, tuple(primaries)
        self._replicas = {node: tuple(found) for node, found in replicas.items()}
        self._answered = asked
        self._suspects.pop(asked, None)
        self.version += 1
        return True

    def assign(self, slot: int, node: NodeAddress) -> None:
        """`node` serves `slot`, as a MOVED said, whatever the last map says."""
        node = next((known for known in self._primaries if known == node), node)  # one object per node
        slots = list(self._slots)
        slots[slot] = node
        primaries = dict.fromkeys(n for n in slots if n is not None)
        self._slots, self._primaries = slots, tuple(primaries)

    def suspect(self, node: NodeAddress) -> None:
        """`node` just failed: ask the others first for the next map."""
        self._suspects[node] = None

    def forget(self, node: NodeAddress) -> None:
        """The connection to `node` failed: ask the others first for the next map, and send it
        scripts whole again (a restarted node has none)."""
        self.suspect(node)
        self.loaded_scripts.setdefault(node, set()).clear()

    def _candidates(self) -> list[NodeAddress]:
        """Who to ask for the map: the node that gave the last one, the primaries, their
        replicas, the seeds; those that failed lately last."""
        order: dict[NodeAddress, None] = {}
        if self._answered is not None:
            order[self._answered] = None
        order.update(dict.fromkeys(self._primaries))
        for found in self._replicas.values():
            order.update(dict.fromkeys(found))
        order.update(dict.fromkeys(self.target.seed_nodes()))
        suspects = [node for node in order if node in self._suspects]
        return [node for node in order if node not in self._suspects] + suspects

    def _take(self, node: NodeAddress, reply: Any, errors: list[str]) -> bool:
        """Whether `reply` (to CLUSTER SLOTS, from `node`) gave a map."""
        if isinstance(reply, ResponseError):
            if _DISABLED in str(reply):
                raise ClusterModeError(
                    f"{self.target.where} points at a Redis without cluster support ({node} answers: "
                    f"{reply}); for a single Redis write redis://{node}/0 (rediss:// with TLS)"
                )
            raise PublishError(f"Redis at {node} refused CLUSTER SLOTS: {reply}")
        if self.apply_slots(reply, node):
            return True
        errors.append(f"{node} serves no slot yet")
        return False

    def _failed(self, node: NodeAddress, exc: BaseException, errors: list[str]) -> None:
        self.suspect(node)
        errors.append(f"{node}: {exc}")

    def _nobody(self, errors: list[str]) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"no node of {self.target.where} gave the slot map (CLUSTER SLOTS): {'; '.join(errors)}")
