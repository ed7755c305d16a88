-- The Redis half of disconnect_user: delete the user's recoverable sessions and mark the user
-- revoked, so that a session created before now is never recovered on any replica.
-- KEYS[1] the user's session set (ngw:sessions:<user>, a sorted set)   KEYS[2] ngw:revoked:<user>
-- ARGV[1] session key prefix (e.g. "ngw:s:")      ARGV[2] how long the mark lives, ms
-- Returns the number of sessions deleted.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local deleted = 0
for _, pid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. pid)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], string.format('%d', ms), 'PX', ARGV[2])
return deleted
