#!lua
-- A replica's heartbeat: it is alive, and how many users it holds (docs/wire-protocol.md,
-- "Presence"). Replicas silent for 10 TTLs are forgotten with their counts.
-- KEYS[1] <prefix>:{replicas}:live   KEYS[2] <prefix>:{replicas}:users
-- ARGV[1] replica id   ARGV[2] now, ms   ARGV[3] replica TTL, ms   ARGV[4] users held here
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[3]))
for _, replica in ipairs(gone) do
  redis.call('ZREM', KEYS[1], replica)
  redis.call('HDEL', KEYS[2], replica)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
