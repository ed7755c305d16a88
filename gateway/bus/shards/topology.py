"""Following the cluster's topology: which shard holds which channels, as the slot map changes.

Channels are grouped by slot, and a slot's channels are held by the shard of the node that
serves it (`place`, `shard_for`). When that changes, the channels move, and the other shards
are not disturbed:
- a slot migrated: Redis pushes `sunsubscribe` for a channel we did not unsubscribe
  (`pushed_out`): the channel is lost, the map refreshed, the channel subscribed on its new
  owner;
- a `-MOVED` reply to an SSUBSCRIBE (`refused`): the new owner is noted as a hint, the map
  refreshed, the channel subscribed there (a channel being restored is lost again first);
- a shard's connection lost, a primary killed (`shard_down`): its channels are lost, the node
  suspected, the map refreshed with backoff until their slots are served again (a replica is
  promoted within seconds); the shard meanwhile reconnects on its own;
- nodes added or slots moved otherwise: the periodic refresh (`refresh_loop`, every
  `tuning.REFRESH_EVERY` s) finds them.
Refreshes are debounced (`want_refresh`): a burst of events makes one refresh. After each,
`reconcile` puts every slot's channels on the slot's owner, subscribes what is missing and
closes the shards left without channels. A single Redis has no map: `want_refresh` reconciles
at once (a pushed-out channel is subscribed again).

Functions of the `ShardedChannels` they follow (`owner`), not methods: they are the part of it
that changes with the cluster, kept apart so that `channels.py` reads as the API and the
bookkeeping of the channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from gateway.bus.shards import tuning
from gateway.bus.shards.connection import _CALL, Node, _Shard
from gateway.bus.shards.state import LIVE, LOST, RESTORING
from publisher.cluster import ClusterModeError, NodeAddress

if TYPE_CHECKING:
    from gateway.bus.shards.channels import ShardedChannels

log = logging.getLogger("gateway.bus")


def place(owner: ShardedChannels, slot: int) -> _Shard | None:
    node = owner._owner_of(slot)
    if node is None:
        return None
    shard = shard_for(owner, node)
    owner._home[slot] = shard
    shard.slots.add(slot)
    return shard


def shard_for(owner: ShardedChannels, node: Node) -> _Shard:
    shard = owner._shards.get(node)
    if shard is None:
        shard = owner._shards[node] = _Shard(owner, node)
        if owner._started and not owner._closed:
            shard.start()
    return shard


def shard_down(owner: ShardedChannels, shard: _Shard, *, closing: bool = False) -> None:
    """Its connection is gone (or closed): its channels are lost, the map may have changed."""
    was = (shard.writable or shard.proto is not None) and not closing
    shard.writable = False
    shard.settled = False
    state = owner._state
    held = shard.confirmed | shard.sent
    shard.confirmed.clear()
    shard.sent.clear()
    shard.queue.clear()
    for what, arg in shard.fifo:
        if what == _CALL and not arg.done():
            arg.set_exception(ConnectionError("connection lost"))
    shard.fifo.clear()
    proto, shard.proto = shard.proto, None
    if proto is not None and proto.transport is not None:
        proto.transport.abort()
    lost = [ch for ch in held if state.get(ch) in (LIVE, RESTORING)
            and owner._home.get(owner._slot[ch]) is shard]
    for ch in lost:
        state[ch] = LOST
        owner._unsettled.add(ch)
    if owner._closed:
        return
    if lost:
        log.warning("bus shard %s down: %d channels lost until it is back", shard.name, len(lost),
                    extra={"shard": shard.name})
        owner._tell("channels_lost", lost)
    if was and owner._topology is not None and isinstance(shard.node, NodeAddress):
        owner._topology.suspect(shard.node)
        want_refresh(owner)


def pushed_out(owner: ShardedChannels, shard: _Shard, channel: bytes) -> None:
    """Redis unsubscribed us from `channel` (its slot migrated away from the node)."""
    if channel not in shard.confirmed:
        return  # an old answer: it is no longer subscribed here anyway
    shard.confirmed.discard(channel)
    owner.count("slot_moved")
    want_refresh(owner)
    if channel == shard.probe:
        return
    if owner._state.get(channel) == LIVE and owner._home.get(owner._slot[channel]) is shard:
        owner._state[channel] = LOST
        owner._unsettled.add(channel)
        shard.lost.append(channel)


def refused(owner: ShardedChannels, shard: _Shard, channel: bytes, error: str) -> None:
    """An SSUBSCRIBE answered by an error: MOVED (another node serves the slot) or other."""
    if error.startswith("MOVED "):
        owner.count("moved")
        if owner._single is not None:  # a plain URL at a cluster node: never ready
            owner._cluster_node(shard)
            if shard.proto is not None and shard.proto.transport is not None:
                shard.proto.transport.abort()
            return
        _, slot_text, address = [*error.split(), "", ""][:3]
        host, _, port = address.rpartition(":")
        if slot_text.isdigit() and port.isdigit() and owner._target is not None:
            node = shard.node
            assert isinstance(node, NodeAddress)
            owner._hints[int(slot_text)] = owner._target.node(host.strip("[]") or node.host, int(port))
        want_refresh(owner)
    else:
        owner.count("subscribe_refused")
        hint = " (sharded pub/sub needs Redis >= 7.0)" if "unknown command" in error.lower() else ""
        owner._log_limited("refused", logging.ERROR, "bus shard %s refused SSUBSCRIBE: %s%s",
                           shard.name, error, hint, shard=shard.name)
    if channel != shard.probe and owner._state.get(channel) == RESTORING \
            and owner._home.get(owner._slot[channel]) is shard:
        owner._state[channel] = LOST  # lost again: held sockets are let go until it is back
        shard.lost.append(channel)


def want_refresh(owner: ShardedChannels) -> None:
    """Refresh the slot map soon (one refresh for a burst), then put every channel where
    it belongs. A single Redis has no map: its channels are subscribed again at once."""
    if owner._closed or owner._refresh_wanted is None:
        return
    if owner._single is None:
        owner._refresh_wanted.set()
    elif not owner._refresh_wanted.is_set():
        owner._refresh_wanted.set()
        asyncio.get_running_loop().call_soon(resync, owner)


def resync(owner: ShardedChannels) -> None:
    assert owner._refresh_wanted is not None
    owner._refresh_wanted.clear()
    if not owner._closed:
        reconcile(owner)


async def refresh_loop(owner: ShardedChannels) -> None:
    wanted = owner._refresh_wanted
    assert wanted is not None
    assert owner._topology is not None
    delay = tuning.REFRESH_RETRY_START
    while True:
        if not wanted.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wanted.wait(), tuning.REFRESH_EVERY)
        await asyncio.sleep(tuning.REFRESH_DEBOUNCE)
        wanted.clear()
        ok = False
        try:
            await owner._topology.refresh()
            ok = True
        except ClusterModeError as exc:
            owner.count("cluster_mode")
            owner._log_limited("topology", logging.ERROR, "bus: %s", exc)
        except Exception as exc:  # noqa: BLE001 - retried with backoff
            owner.count("topology_refresh_failed")
            owner._log_limited("topology", logging.WARNING, "bus: the cluster's slot map could not be read: %s",
                               exc)
        if ok:
            try:
                apply_hints(owner)
                owner._loaded = True
                reconcile(owner)
            except Exception:  # a bug here must not stop the following of the topology
                ok = False
                log.exception("bus: following the cluster's new slot map failed")
        if ok and not degraded(owner):
            delay = tuning.REFRESH_RETRY_START
            continue
        await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, tuning.REFRESH_RETRY_CAP)
        wanted.set()


def apply_hints(owner: ShardedChannels) -> None:
    hints, owner._hints = owner._hints, {}
    topology = owner._topology
    assert topology is not None
    for slot, node in hints.items():
        if topology.node_for_slot(slot) != node:
            topology.assign(slot, node)


def degraded(owner: ShardedChannels) -> bool:
    """A shard holding channels is down, or a channel has no shard: refresh again soon."""
    if any(shard.slots and not shard.writable for shard in owner._shards.values()):
        return True
    return any(owner._slot[ch] not in owner._home for ch in owner._unsettled)


def reconcile(owner: ShardedChannels) -> None:
    """Put every slot's channels on the slot's owner as the map says now; subscribe what
    is missing; close the shards left without channels."""
    moved: list[bytes] = []
    state = owner._state
    for slot, channels in owner._by_slot.items():
        node = owner._owner_of(slot)
        old = owner._home.get(slot)
        if node is None or (old is not None and old.node == node):
            continue
        new = shard_for(owner, node)
        if old is not None:
            old.slots.discard(slot)
        owner._home[slot] = new
        new.slots.add(slot)
        for ch in channels:
            if old is not None:
                if ch in old.confirmed:
                    old.sunsubscribe(ch)
                old.sent.discard(ch)  # its answer there finds it moved
            if state[ch] in (LIVE, RESTORING):
                state[ch] = LOST
                owner._unsettled.add(ch)
                moved.append(ch)
    if moved:
        log.info("bus: %d channels move to another shard", len(moved))
        owner._tell("channels_lost", moved)
    for shard in list(owner._shards.values()):
        if not shard.slots:
            del owner._shards[shard.node]
            log.info("bus shard %s: no channel left, closed", shard.name, extra={"shard": shard.name})
            owner._spawn(shard.stop(), owner._stopping)
        else:
            owner._sync(shard)
