-- Presence (docs/wire-protocol.md, "Presence"): a user is online when they are in the set of a
-- replica whose heartbeat is less than the TTL old. Set keys are built from replica ids, so
-- this runs on a single Redis (standalone or Sentinel), not a Cluster.
-- KEYS[1] the replicas sorted set (score: ms of the last heartbeat)
-- ARGV[1] online set key prefix (e.g. "ngw:online:")   ARGV[2] "online" or "count"
-- ARGV[3] the user id (for "online")   ARGV[4] replica TTL, ms
-- Returns 1/0 for "online", the number of distinct users for "count".
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local since = '(' .. string.format('%d', ms - tonumber(ARGV[4]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')

if ARGV[2] == 'online' then
  for _, replica in ipairs(live) do
    if redis.call('SISMEMBER', ARGV[1] .. replica, ARGV[3]) == 1 then return 1 end
  end
  return 0
end
if #live == 0 then return 0 end
if #live == 1 then return redis.call('SCARD', ARGV[1] .. live[1]) end
local keys = {}
for i, replica in ipairs(live) do keys[i] = ARGV[1] .. replica end
return #redis.call('SUNION', unpack(keys))
