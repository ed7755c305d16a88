#!lua
-- A fence in the producers' stream (publisher/bridge/lease.py): published on a channel every
-- bridge reads on the same connection as the producers' channels, so that all of them see it at
-- the same place among the producers' messages.
-- KEYS[1] the lease key (it only routes the call)   ARGV[1] the fence channel   ARGV[2] the fence
-- Returns the number of bridges that received it.
return redis.call('PUBLISH', ARGV[1], ARGV[2])
