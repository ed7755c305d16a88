#!lua
-- A control about the sockets in a room (docs/wire-protocol.md, "Room controls"): published on
-- the room's channel, with no history; each replica applies it to its own sockets in the room.
-- KEYS[1] the room's history stream (<prefix>:{<room>}:h): not touched, it names the room's slot
-- so that a cluster routes the call to the shard of the channel.
-- ARGV[1] the room's channel   ARGV[2] the control message
-- Returns the number of replicas that received it.
return redis.call('SPUBLISH', ARGV[1], ARGV[2])
