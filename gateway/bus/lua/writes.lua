-- The writes a replica does not wait for, batched: one call per event-loop turn.
-- ARGV[1] key prefix  ARGV[2] replica id  ARGV[3] TTL of a connected session, ms
-- ARGV[4] TTL of a session whose client left (the recovery window), ms  ARGV[5] presence TTL, ms
-- then operations, each a tag and its fields:
--   S pid user sid rooms start created alive joined
--                                save a session (connected) and index it under its user
--                                (fields: publisher/session.py)
--   R pid rooms room kind at     its rooms changed: `room` joined (kind "j") or left ("l") at
--                                stream id `at` (recovery replays a room from its join and up to
--                                its leave; see publisher/lua/rooms.lua)
--   E pid t                      the session's client left at t: keep it for the window
--   O user                       user online on this replica
--   F user                       user no longer online on this replica
local prefix, replica = ARGV[1], ARGV[2]
local live_ttl, gone_ttl, presence_ttl = ARGV[3], ARGV[4], ARGV[5]
local online = prefix .. ":online:" .. replica
local i = 6
while i <= #ARGV do
  local op = ARGV[i]
  if op == "S" then
    local key = prefix .. ":s:" .. ARGV[i + 1]
    redis.call("HSET", key, "{{field.user}}", ARGV[i + 2], "{{field.sid}}", ARGV[i + 3],
               "{{field.rooms}}", ARGV[i + 4], "{{field.start}}", ARGV[i + 5], "{{field.created}}", ARGV[i + 6],
               "{{field.alive}}", ARGV[i + 7], "{{field.joined}}", ARGV[i + 8])
    redis.call("PEXPIRE", key, live_ttl)
    local index = prefix .. ":u:" .. ARGV[i + 2]
    redis.call("SADD", index, ARGV[i + 1])
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
        if at ~= "" then joined[room] = at end
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
      redis.call("HSET", key, "{{field.alive}}", ARGV[i + 2])
      redis.call("PEXPIRE", key, gone_ttl)
    end
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
