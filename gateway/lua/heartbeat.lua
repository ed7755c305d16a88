-- A replica's periodic heartbeat: presence and the liveness of its sessions, in one call.
-- KEYS[1]: <prefix>:replicas  KEYS[2]: <prefix>:online:<replica>
-- ARGV[1]: replica id  ARGV[2]: now, ms  ARGV[3]: presence TTL, ms  ARGV[4]: session TTL, ms
-- ARGV[5]: key prefix  ARGV[6]: number of users N, then N user ids, then the pids of the
-- replica's connected sessions.
-- The online set is rewritten whole, so a Redis that restarted empty is repaired within one
-- beat; sessions get `t` = now (last known alive) and their TTL pushed back.
local now = ARGV[2]
redis.call("ZADD", KEYS[1], now, ARGV[1])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", tonumber(now) - 10 * tonumber(ARGV[3]))
redis.call("DEL", KEYS[2])
local n = tonumber(ARGV[6])
local first = 7
if n > 0 then
  for i = first, first + n - 1, 5000 do
    redis.call("SADD", KEYS[2], unpack(ARGV, i, math.min(i + 4999, first + n - 1)))
  end
  redis.call("PEXPIRE", KEYS[2], ARGV[3])
end
local prefix = ARGV[5] .. ":s:"
for i = first + n, #ARGV do
  local key = prefix .. ARGV[i]
  if redis.call("HSET", key, "t", now) == 0 then
    redis.call("PEXPIRE", key, ARGV[4])
  else
    redis.call("DEL", key)  -- the session was deleted meanwhile (kicked): do not resurrect it
  end
end
return 1
