"""Sharded pub/sub: see `channels.py` (being split by job, issue 11)."""

from gateway.bus.shards.channels import ChannelSink, ShardedChannels

__all__ = ["ChannelSink", "ShardedChannels"]
