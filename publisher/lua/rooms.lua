-- join/leave for a user's recoverable sessions: edit the JSON list in field {{field.rooms}} of each
-- ngw:s:<pid> listed in ngw:u:<user>, so a client away at the time comes back with the right
-- rooms. The user's own room is always kept. Session keys are built here from the pids, so
-- this runs on a single Redis (standalone or Sentinel), not a Cluster.
-- Each session also keeps, in field {{field.joined}} (a JSON object), the bus position at which a room was
-- joined: recovery replays that room from there, not from the client's older offset, so a
-- client away during the join gets the room's events after the join and none before. In field
-- {{field.left}} it keeps where a room was left: a client away during the leave still gets that room's
-- events from its offset up to the leave, and none after.
-- KEYS[1] the user's session set   KEYS[2] the clock hash   ARGV[1] session key prefix (e.g. "ngw:s:")
-- ARGV[2] "join" or "leave"   ARGV[3] the user's own room   ARGV[4..] the rooms
-- Returns the number of sessions changed.
local prefix, joining, own = ARGV[1], ARGV[2] == 'join', ARGV[3]
local given = {}
for i = 4, #ARGV do given[ARGV[i]] = true end

local clock = redis.call('HMGET', KEYS[2], 'ms', 'seq')
local here = string.format('%d-%d', tonumber(clock[1]) or 0, tonumber(clock[2]) or 0)

local changed = 0
for _, pid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = prefix .. pid
  local raw = redis.call('HGET', key, '{{field.rooms}}')
  local ok, rooms = false, nil
  if raw then ok, rooms = pcall(cjson.decode, raw) end
  if ok and type(rooms) == 'table' then
    local out, seen, was = {own}, {[own] = true}, {}
    for _, room in ipairs(rooms) do
      was[room] = true
      if type(room) == 'string' and not seen[room] and (joining or not given[room]) then
        out[#out + 1] = room
        seen[room] = true
      end
    end
    if joining then
      for i = 4, #ARGV do
        if not seen[ARGV[i]] then
          out[#out + 1] = ARGV[i]
          seen[ARGV[i]] = true
        end
      end
    end
    local encoded = cjson.encode(out)
    if encoded ~= raw then
      local function map(field)
        local raw_map = redis.call('HGET', key, field)
        local map_ok, value = false, nil
        if raw_map then map_ok, value = pcall(cjson.decode, raw_map) end
        if not map_ok or type(value) ~= 'table' then value = {} end
        return value
      end
      local function encode_map(value)
        if next(value) == nil then return '{}' end
        return cjson.encode(value)
      end
      local joined, left = map('{{field.joined}}'), map('{{field.left}}')
      for i = 4, #ARGV do
        if joining then
          if not joined[ARGV[i]] then joined[ARGV[i]] = here end
          left[ARGV[i]] = nil
        elseif was[ARGV[i]] and not seen[ARGV[i]] then  -- a member until now: it left here
          left[ARGV[i]] = here
          joined[ARGV[i]] = nil
        end
      end
      redis.call('HSET', key, '{{field.rooms}}', encoded, '{{field.joined}}', encode_map(joined),
                 '{{field.left}}', encode_map(left))
      changed = changed + 1
    end
  end
end
return changed
