-- The writes a replica does not wait for, batched: one call per event-loop turn.
-- ARGV[1] key prefix  ARGV[2] replica id  ARGV[3] TTL of a connected session, ms
-- ARGV[4] TTL of a session whose client left (the recovery window), ms  ARGV[5] presence TTL, ms
-- then operations, each a tag and its fields:
--   S pid user sid rooms start created alive joined
--                                save a session (connected) and index it under its user
--                                (fields: publisher/session.py)
--   R pid rooms room kind at     its rooms changed: `room` joined (kind "j") or left ("l") at
--                                stream id `at` (recovery replays a room from its join and up to
--                                its leave; see publisher/lua/rooms.lua). A joined room is kept
--                                in {{field.joined}} for the session's life: it marks the rooms that
--                                did not come from the token, which a recovery checks again.
--   E pid user t                 the session's client left at t: keep it for the window
--   D pid user                   the client left for good (its own disconnect): forget it
--   O user                       user online on this replica
--   F user                       user no longer online on this replica
-- A user's sessions are indexed in the sorted set <prefix>:sessions:<user> (member: pid, score:
-- ms when the session expires), so the index is trimmed as its sessions end and never outgrows
-- them; past ARGV[6] sessions the oldest are evicted, so no user can fill Redis with sessions.
local prefix, replica = ARGV[1], ARGV[2]
local live_ttl, gone_ttl, presence_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local max_sessions = tonumber(ARGV[6])
local online = prefix .. ":online:" .. replica
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function index_of(user) return prefix .. ":sessions:" .. user end
local i = 7
while i <= #ARGV do
  local op = ARGV[i]
  if op == "S" then
    local key = prefix .. ":s:" .. ARGV[i + 1]
    redis.call("HSET", key, "{{field.user}}", ARGV[i + 2], "{{field.sid}}", ARGV[i + 3],
               "{{field.rooms}}", ARGV[i + 4], "{{field.start}}", ARGV[i + 5], "{{field.created}}", ARGV[i + 6],
               "{{field.alive}}", ARGV[i + 7], "{{field.joined}}", ARGV[i + 8])
    redis.call("PEXPIRE", key, live_ttl)
    local index = index_of(ARGV[i + 2])
    redis.call("ZADD", index, now + live_ttl, ARGV[i + 1])
    redis.call("ZREMRANGEBYSCORE", index, "-inf", now)
    local over = redis.call("ZCARD", index) - max_sessions
    if over > 0 then
      local evicted = redis.call("ZPOPMIN", index, over)
      for e = 1, #evicted, 2 do redis.call("DEL", prefix .. ":s:" .. evicted[e]) end
    end
    redis.call("PEXPIRE", index, live_ttl)
    i = i + 9
  elseif op == "R" then
    local key = prefix .. ":s:" .. ARGV[i + 1]
    if redis.call("EXISTS", key) == 1 then
      local function map(field)
        local ok, value = pcall(cjson.decode, redis.call("HGET", key, field) or "{}")
        if not ok or type(value) ~= "table" then value = {} end
        return value
      end
      local function encode_map(value)
        if next(value) == nil then return "{}" end
        return cjson.encode(value)
      end
      local room, kind, at = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
      local joined, left = map("{{field.joined}}"), map("{{field.left}}")
      if kind == "j" then
        left[room] = nil
        joined[room] = at ~= "" and at or "0-0"  -- "0-0": replayed from the client's offset
      else
        joined[room] = nil
        if at ~= "" then left[room] = at end
      end
      redis.call("HSET", key, "{{field.rooms}}", ARGV[i + 2], "{{field.joined}}", encode_map(joined),
                 "{{field.left}}", encode_map(left))
    end
    i = i + 6
  elseif op == "E" then
    local key = prefix .. ":s:" .. ARGV[i + 1]
    if redis.call("EXISTS", key) == 1 then  -- never recreate a session a kick deleted
      redis.call("HSET", key, "{{field.alive}}", ARGV[i + 3])
      redis.call("PEXPIRE", key, gone_ttl)
      redis.call("ZADD", index_of(ARGV[i + 2]), "XX", now + gone_ttl, ARGV[i + 1])
    end
    i = i + 4
  elseif op == "D" then
    redis.call("DEL", prefix .. ":s:" .. ARGV[i + 1])
    redis.call("ZREM", index_of(ARGV[i + 2]), ARGV[i + 1])
    i = i + 3
  elseif op == "O" then
    redis.call("SADD", online, ARGV[i + 1])
    redis.call("PEXPIRE", online, presence_ttl)
    i = i + 2
  elseif op == "F" then
    redis.call("SREM", online, ARGV[i + 1])
    i = i + 2
  else
    return redis.error_reply("writes.lua: unknown operation " .. tostring(op))
  end
end
return 1
