"""The self-check of each shard's connection: is it open AND still delivering?

A pub/sub connection can stay open and go deaf (a node that lost its subscribers' state, a
proxy in between): only traffic proves it delivers. So, while a shard is up, its supervisor
(`connection._Shard`) runs `watch`: a PING every `tuning.PING_EVERY` s, answered in order on
the connection, and every `tuning.PROBE_EVERY` pings a probe round trip, a message SPUBLISHed
on a command connection to the same node and expected back on the subscription. A shard that
fails either is reconnected alone; the other shards are not disturbed.

Each shard has its own probe channel (`probe_channel`), one of ours (`{__probe:<replica>:<n>}`)
that hashes to one of the node's slots, so the probe crosses the very node the shard listens
to; it is found anew when that slot moves.
"""

from __future__ import annotations

import asyncio
import logging
from binascii import crc_hqx
from typing import TYPE_CHECKING

from redis.exceptions import RedisError, ResponseError

from gateway.bus.shards import tuning
from publisher.cluster import SLOTS, key_slot

if TYPE_CHECKING:
    from gateway.bus.shards.channels import ShardedChannels
    from gateway.bus.shards.connection import _Shard

log = logging.getLogger("gateway.bus")


async def watch(shard: _Shard) -> None:
    """Return (raise) when the connection is lost or fails its self-check."""
    proto = shard.proto
    assert proto is not None
    pings = 0
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(proto.lost), tuning.PING_EVERY)
        except TimeoutError:
            pass
        else:
            raise ConnectionError("connection lost")
        try:
            await asyncio.wait_for(shard.call(b"PING"), tuning.REPLY_TIMEOUT)
        except (TimeoutError, ConnectionError, ResponseError):
            shard.owner.count("selfcheck_repair")
            raise ConnectionError("no answer to PING on the pub/sub connection") from None
        pings += 1
        if pings % tuning.PROBE_EVERY == 0 and await probe_round_trip(shard) is False:
            shard.owner.count("selfcheck_repair")
            raise ConnectionError("a probe published through redis did not come back")


async def probe_round_trip(shard: _Shard) -> bool | None:
    """SPUBLISH on our probe channel (on a command connection to this node) and expect it
    back on the subscription: True, False (deaf), None (could not tell: no probe now)."""
    probe = shard.probe
    if probe is None or probe not in shard.confirmed:
        return None
    client = shard.command if shard.command is not None else shard.owner._client(shard.node)
    if client is None:
        return None
    shard.probe_seen.clear()
    try:
        receivers = await asyncio.wait_for(
            client.execute_command("SPUBLISH", probe, b"probe"), tuning.REPLY_TIMEOUT)  # type: ignore[no-untyped-call]
    except ResponseError as exc:  # MOVED: the slot moved; the refresh will pick another probe
        log.info("bus shard %s: the probe was refused: %s", shard.name, exc, extra={"shard": shard.name})
        shard.owner._want_refresh()
        return None
    except (TimeoutError, RedisError, OSError):
        return False
    if not receivers:
        return False
    try:
        await asyncio.wait_for(shard.probe_seen.wait(), tuning.REPLY_TIMEOUT)
    except TimeoutError:
        return False
    return True


def probe_channel(owner: ShardedChannels, shard: _Shard) -> bytes | None:
    """The shard's probe channel: kept while its slot is the shard's, else found anew."""
    def owned(channel: bytes) -> bool:
        return owner._owner_of(key_slot(channel)) == shard.node

    if shard.probe is not None and owned(shard.probe):
        return shard.probe
    if shard.probe is not None:
        old, shard.probe = shard.probe, None
        if old in shard.confirmed:
            shard.sunsubscribe(old)
        shard.sent.discard(old)
    if owner._single is not None:
        shard.probe = owner.names.room_channel(f"__probe:{owner.replica_id}:0").encode()
        return shard.probe
    if owner._topology is None or not owner._loaded:
        return None
    mine = {slot for slot, node in enumerate(owner._topology.table()) if node == shard.node}
    n = probe_number(owner.replica_id, mine)
    if n is None:
        return None
    shard.probe = owner.names.room_channel(f"__probe:{owner.replica_id}:{n}").encode()
    return shard.probe


def probe_number(replica_id: str, slots: set[int]) -> int | None:
    """The first n whose probe room `__probe:<replica>:<n>` (the channel's hash tag: the replica
    id has no braces) is in one of `slots`. CRC16 runs on a stream, so each try hashes only the
    number's digits: about 0.25 µs. A shard of one slot needs 16,384 tries on average, and
    tuning.PROBE_SEARCH tries miss with probability e^(-PROBE_SEARCH/16384), 2.5e-11: None
    then, and for no slots."""
    if not slots:
        return None
    head = f"__probe:{replica_id}:".encode()
    base = crc_hqx(head, 0)
    for n in range(tuning.PROBE_SEARCH):
        if crc_hqx(b"%d" % n, base) % SLOTS in slots:
            return n
    return None
