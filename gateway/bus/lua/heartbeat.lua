-- A replica's periodic heartbeat: presence and the liveness of its sessions.
-- KEYS[1]: <prefix>:replicas  KEYS[2]: <prefix>:online:<replica>
-- ARGV[1]: replica id  ARGV[2]: now, ms  ARGV[3]: presence TTL, ms  ARGV[4]: session TTL, ms
-- ARGV[5]: key prefix  ARGV[6]: "full" or "light"
-- ARGV[7]: the users online on the replica, ARGV[8]: its connected sessions as "<pid> <user>",
--          each a "\n"-separated list (two arguments however many sockets: cheap to send).
-- A light beat only says the replica is alive (its score, its online set's TTL). A full beat,
-- every few light ones and after every reconnection, rewrites the online set whole (so a
-- Redis that restarted empty is repaired) and gives each session `t` = now (last known alive)
-- and its TTL back.
local now = ARGV[2]
redis.call("ZADD", KEYS[1], now, ARGV[1])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", tonumber(now) - 10 * tonumber(ARGV[3]))
if ARGV[6] ~= "full" then
  redis.call("PEXPIRE", KEYS[2], ARGV[3])
  return 1
end

local function each(list, fn)
  for item in string.gmatch(list, "[^\n]+") do fn(item) end
end

redis.call("DEL", KEYS[2])
local batch = {}
each(ARGV[7], function(user)
  batch[#batch + 1] = user
  if #batch == 5000 then
    redis.call("SADD", KEYS[2], unpack(batch))
    batch = {}
  end
end)
if #batch > 0 then redis.call("SADD", KEYS[2], unpack(batch)) end
redis.call("PEXPIRE", KEYS[2], ARGV[3])

local ttl = tonumber(ARGV[4])
each(ARGV[8], function(line)  -- "<pid> <user>"
  local space = string.find(line, " ", 1, true)
  if space then
    local pid, user = string.sub(line, 1, space - 1), string.sub(line, space + 1)
    local key = ARGV[5] .. ":s:" .. pid
    if redis.call("EXISTS", key) == 1 then  -- never resurrect a session a kick deleted
      redis.call("HSET", key, "{{field.alive}}", now)
      redis.call("PEXPIRE", key, ttl)
      local index = ARGV[5] .. ":sessions:" .. user
      redis.call("ZADD", index, "XX", tonumber(now) + ttl, pid)
      redis.call("PEXPIRE", index, ttl)
    end
  end
end)
return 1
