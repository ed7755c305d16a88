"""Sharded pub/sub: one subscriber connection per shard that holds channels this replica needs.

Every room's channel is a sharded channel, `socket.io#/notifications#{<room>}#`, whose slot is
the room's (the hash tag). A replica SSUBSCRIBEs a room's channel on the primary that serves
the slot, over one connection per such primary (never one per room), one SSUBSCRIBE command
per channel (CROSSSLOT forbids two slots in one command, even on one node), pipelined. A
single Redis (redis://, rediss://, unix://, redis+sentinel://, Sentinel resolved at each
connection) is the same code with one shard that serves every slot.

    channels = ShardedChannels(parse_cluster_url(url) or parse_endpoint(url), sink,
                               metrics.bus_event, replica_id, names=names)
    channels.start()
    await channels.subscribe(b"socket.io#/notifications#{user:42}#")   # True once confirmed

Each connection is read by a `RespProtocol` (hiredis, no task per connection): the message
body of every `smessage` goes to `sink.on_message`, the messages of one read between
`sink.begin_batch()` and `sink.end_batch()`. Its channels are the sink's business only when
they stop or come back (`ChannelSink`); the broadcast channel (`{*}`) is always desired.

Topology changes are followed without disturbing the other shards:
- Redis pushes `sunsubscribe` for a channel we did not unsubscribe (its slot migrated): the
  channel is lost, the topology refreshed, and the channel subscribed on its new owner;
- a `-MOVED` reply to an SSUBSCRIBE (a FIFO of the commands outstanding on each connection
  says which channel it was for): the new owner is noted, the topology refreshed, the channel
  subscribed there (a channel being restored is lost again first);
- a shard's connection is lost (a primary killed): its channels are lost, the topology is
  refreshed with backoff until their slots are served again (a replica is promoted within
  seconds), and they are subscribed on the new owner(s); meanwhile the shard's connection is
  retried on its own, with capped, jittered backoff;
- a periodic refresh (every REFRESH_EVERY s) finds nodes added and slots moved otherwise: the
  affected channels move. Refreshes are debounced: a burst of events makes one refresh.

Self-check, per shard: PING on its connection, and every PROBE_EVERY pings a probe, SPUBLISHed
on a command connection to the same node on a channel of ours that hashes to one of its slots
(`{__probe:<replica>:<n>}`), expected back on the subscription. A shard that fails it is
reconnected alone.

Readiness: the slot map is known and every shard that holds a desired channel is connected,
with every channel it holds confirmed (a first subscription still in flight excepted).

Where each part is (a module per job; `ShardedChannels` and `ChannelSink`, imported from here,
are the only public names):
- `channels.py`: `ShardedChannels` (the API, the desired channels and their states, readiness)
  and `ChannelSink`;
- `connection.py`: one shard's connection (`_Shard`): connecting, RESP replies matched to their
  commands (a FIFO of those outstanding), SSUBSCRIBE/SUNSUBSCRIBE bookkeeping, MOVED replies and
  pushed `sunsubscribe` recognised and handed on, reconnection with backoff;
- `selfcheck.py`: PING and the probe round trip on each shard, and each shard's probe channel;
- `topology.py`: the slot map refreshed (debounced, with backoff), channels moved between shards
  on migration, failover and new nodes;
- `state.py`: a desired channel's states; `tuning.py`: every delay and period, read at each use
  (tests shorten them there).
"""

from gateway.bus.shards.channels import ChannelSink, ShardedChannels

__all__ = ["ChannelSink", "ShardedChannels"]
