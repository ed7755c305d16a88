#!lua
-- The Redis half of disconnect_user, on the user's shard: delete the user's recoverable
-- sessions, mark the user revoked (a session created before now is never recovered on any
-- replica), then tell the replicas holding the user's sockets to disconnect them.
-- KEYS[1] the user's sessions index   KEYS[2] <prefix>:{user:<id>}:revoked
-- ARGV[1] the user's session key prefix   ARGV[2] how long the mark lives, ms
-- ARGV[3] the user's channel   ARGV[4] the kick message
-- Returns the number of sessions deleted.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local deleted = 0
for _, pid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. pid)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], string.format('%d', ms), 'PX', ARGV[2])
redis.call('SPUBLISH', ARGV[3], ARGV[4])
return deleted
