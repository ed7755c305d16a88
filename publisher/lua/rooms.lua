-- join/leave for a user's recoverable sessions: edit the JSON list in field "rooms" of each
-- ngw:s:<pid> listed in ngw:u:<user>, so a client away at the time comes back with the right
-- rooms. The user's own room is always kept. Session keys are built here from the pids, so
-- this runs on a single Redis (standalone or Sentinel), not a Cluster.
-- KEYS[1] the user's session set   ARGV[1] session key prefix (e.g. "ngw:s:")
-- ARGV[2] "join" or "leave"   ARGV[3] the user's own room   ARGV[4..] the rooms
-- Returns the number of sessions changed.
local prefix, joining, own = ARGV[1], ARGV[2] == 'join', ARGV[3]
local given = {}
for i = 4, #ARGV do given[ARGV[i]] = true end

local changed = 0
for _, pid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = prefix .. pid
  local raw = redis.call('HGET', key, 'rooms')
  local ok, rooms = false, nil
  if raw then ok, rooms = pcall(cjson.decode, raw) end
  if ok and type(rooms) == 'table' then
    local out, seen = {own}, {[own] = true}
    for _, room in ipairs(rooms) do
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
      redis.call('HSET', key, 'rooms', encoded)
      changed = changed + 1
    end
  end
end
return changed
