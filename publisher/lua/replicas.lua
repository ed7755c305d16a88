#!lua
-- The live replicas and how many users each holds: what is_online and online_count need from
-- the {replicas} slot (the other half, the user's set of replicas, is on the user's shard).
-- KEYS[1] <prefix>:{replicas}:live   KEYS[2] <prefix>:{replicas}:users   ARGV[1] replica TTL, ms
-- Returns {replica1, count1, replica2, count2, ...} of the replicas heard from within the TTL.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (ms - tonumber(ARGV[1])), '+inf')) do
  out[#out + 1] = replica
  out[#out + 1] = redis.call('HGET', KEYS[2], replica) or '0'
end
return out
