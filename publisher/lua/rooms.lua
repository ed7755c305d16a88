#!lua
-- A producer's join or leave for every socket of one user (docs/wire-protocol.md, "Control
-- messages"): the user's recoverable sessions are edited, then the replicas holding the user's
-- sockets are told, in one step on the user's shard (its sessions and channel carry the user's
-- room as their hash tag), so a client away at the time comes back with the right rooms.
-- KEYS[1] the user's sessions index (<prefix>:{user:<id>}:sessions)
-- ARGV[1] the user's session key prefix (<prefix>:{user:<id>}:s:)   ARGV[2] "join" or "leave"
-- ARGV[3] the user's own room   ARGV[4] the user's channel   ARGV[5] the control message
-- ARGV[6], ARGV[7], ...: room, its position at this moment (read on the room's own shard)
-- A session's fields are named in publisher/session.py. Returns the number of sessions changed.
local prefix, joining, own = ARGV[1], ARGV[2] == 'join', ARGV[3]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local function decoded(key, field, default)
  local raw = redis.call('HGET', key, field)
  if not raw then return default end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return default
end
local function encoded(value, is_list)
  if next(value) == nil then return is_list and '[]' or '{}' end
  return cjson.encode(value)
end

local changed = 0
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now_ms, '+inf')) do
  local key = prefix .. pid
  if redis.call('EXISTS', key) == 1 then
    local rooms = decoded(key, '{{field.rooms}}', {})
    local starts = decoded(key, '{{field.starts}}', {})
    local left = decoded(key, '{{field.left}}', {})
    local extra = decoded(key, '{{field.extra}}', {})
    local member = {}
    for _, room in ipairs(rooms) do member[room] = true end
    local out_rooms, out_extra = {}, {}
    for i = 6, #ARGV, 2 do
      local room, at = ARGV[i], ARGV[i + 1]
      if joining and not member[room] then
        rooms[#rooms + 1] = room
        member[room] = true
        starts[room] = at
        left[room] = nil
        extra[#extra + 1] = room
      elseif not joining and member[room] and room ~= own then
        member[room] = nil
        left[room] = at
      end
    end
    for _, room in ipairs(rooms) do
      if member[room] then out_rooms[#out_rooms + 1] = room end
    end
    for _, room in ipairs(extra) do
      if member[room] then out_extra[#out_extra + 1] = room end
    end
    redis.call('HSET', key, '{{field.rooms}}', encoded(out_rooms, true), '{{field.starts}}', encoded(starts),
               '{{field.left}}', encoded(left), '{{field.extra}}', encoded(out_extra, true))
    changed = changed + 1
  end
end
redis.call('SPUBLISH', ARGV[4], ARGV[5])
return changed
