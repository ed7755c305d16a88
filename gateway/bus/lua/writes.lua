-- The writes a replica does not wait for, batched: one call per slot per event-loop turn (the
-- replica groups operations by their user's slot, so on a Redis Cluster every key of a call is
-- in the slot of KEYS[1]; on a single Redis one call carries them all).
-- KEYS[1] a key of the slot (routing only)
-- ARGV[1] key prefix  ARGV[2] replica id  ARGV[3] TTL of a connected session, ms
-- ARGV[4] TTL of a session whose client left (the recovery window), ms
-- ARGV[5] most sessions kept per user  ARGV[6] presence TTL, ms
-- then operations, each a tag and its fields (a session's hash fields: publisher/session.py):
--   S pid user sid rooms starts left extra created alive
--                         save a session (connected) and index it under its user
--   R pid user rooms room kind at
--                         its rooms changed: `room` joined (kind "j") or left ("l") at position
--                         `at` ("" when unknown); a joined room is one the token did not give
--   A pid user t          the session's client is connected at t (refreshes its life)
--   E pid user t          the session's client left at t: keep it for the window
--   D pid user            the client left for good (its own disconnect): forget it
--   O user                user online on this replica (refreshes the presence TTL too)
--   F user                user no longer online on this replica
-- A user's sessions are indexed in the sorted set <prefix>:{user:<id>}:sessions (member: pid,
-- score: ms when it expires), trimmed as sessions end; past ARGV[5] sessions the oldest are
-- evicted, so no user can fill Redis with sessions.
local prefix, replica = ARGV[1], ARGV[2]
local live_ttl, gone_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_sessions, presence_ttl = tonumber(ARGV[5]), ARGV[6]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function tag(user) return prefix .. ':{user:' .. user .. '}' end
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

local i = 7
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'S' then
    local pid, user = ARGV[i + 1], ARGV[i + 2]
    local key = tag(user) .. ':s:' .. pid
    redis.call('HSET', key, '{{field.user}}', user, '{{field.sid}}', ARGV[i + 3], '{{field.rooms}}', ARGV[i + 4],
               '{{field.starts}}', ARGV[i + 5], '{{field.left}}', ARGV[i + 6], '{{field.extra}}', ARGV[i + 7],
               '{{field.created}}', ARGV[i + 8], '{{field.alive}}', ARGV[i + 9])
    redis.call('PEXPIRE', key, live_ttl)
    local index = tag(user) .. ':sessions'
    redis.call('ZADD', index, now + live_ttl, pid)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
    local over = redis.call('ZCARD', index) - max_sessions
    if over > 0 then
      local evicted = redis.call('ZPOPMIN', index, over)
      for e = 1, #evicted, 2 do redis.call('DEL', tag(user) .. ':s:' .. evicted[e]) end
    end
    redis.call('PEXPIRE', index, live_ttl)
    i = i + 10
  elseif op == 'R' then
    local key = tag(ARGV[i + 2]) .. ':s:' .. ARGV[i + 1]
    if redis.call('EXISTS', key) == 1 then
      local room, kind, at = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
      local starts = decoded(key, '{{field.starts}}', {})
      local left = decoded(key, '{{field.left}}', {})
      local extra, kept = decoded(key, '{{field.extra}}', {}), {}
      for _, r in ipairs(extra) do
        if r ~= room then kept[#kept + 1] = r end
      end
      if kind == 'j' then
        left[room] = nil
        if at ~= '' then starts[room] = at end
        kept[#kept + 1] = room
      else
        if at ~= '' then left[room] = at end
      end
      redis.call('HSET', key, '{{field.rooms}}', ARGV[i + 3], '{{field.starts}}', encoded(starts),
                 '{{field.left}}', encoded(left), '{{field.extra}}', encoded(kept, true))
    end
    i = i + 7
  elseif op == 'A' or op == 'E' then
    local pid, user = ARGV[i + 1], ARGV[i + 2]
    local key = tag(user) .. ':s:' .. pid
    if redis.call('EXISTS', key) == 1 then  -- never recreate a session a kick deleted
      local ttl = op == 'A' and live_ttl or gone_ttl
      redis.call('HSET', key, '{{field.alive}}', ARGV[i + 3])
      redis.call('PEXPIRE', key, ttl)
      redis.call('ZADD', tag(user) .. ':sessions', 'XX', now + ttl, pid)
      redis.call('PEXPIRE', tag(user) .. ':sessions', live_ttl)
    end
    i = i + 4
  elseif op == 'D' then
    redis.call('DEL', tag(ARGV[i + 2]) .. ':s:' .. ARGV[i + 1])
    redis.call('ZREM', tag(ARGV[i + 2]) .. ':sessions', ARGV[i + 1])
    i = i + 3
  elseif op == 'O' then
    redis.call('SADD', tag(ARGV[i + 1]) .. ':on', replica)
    redis.call('PEXPIRE', tag(ARGV[i + 1]) .. ':on', presence_ttl)
    i = i + 2
  elseif op == 'F' then
    redis.call('SREM', tag(ARGV[i + 1]) .. ':on', replica)
    i = i + 2
  else
    return redis.error_reply('writes.lua: unknown operation ' .. tostring(op))
  end
end
return 1
