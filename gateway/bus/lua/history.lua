#!lua
-- A room's events after a position, exactly or not at all (docs/wire-protocol.md, "Recovery, exactly").
-- KEYS[1] the room's history stream.
-- ARGV[1] replay after this position; ARGV[2] up to this one, inclusive ("+": no end);
-- ARGV[3] the stream's lifetime, ms (2 x RECOVERY_WINDOW); ARGV[4] at most this many entries.
-- Returns {1, id1, message1, id2, message2, ...}, or {0, why} when the replay could be short.
local key, after, till = KEYS[1], ARGV[1], ARGV[2]
local dash = string.find(after, '-', 1, true)
local after_ms = tonumber(string.sub(after, 1, dash - 1))
local empty_at_start = string.sub(after, dash + 1) == '18446744073709551615'

if redis.call('EXISTS', key) == 0 then
  if empty_at_start then
    return {1}  -- nothing was published since, or it expired after a quiet spell
  end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if after_ms < now_ms - tonumber(ARGV[3]) then
    return {1}  -- it expired: its last entry is older than anything a client away can miss
  end
  return {0, 'gone'}  -- it held this entry within its lifetime: lost (a flush, a failover)
end

if empty_at_start then
  -- Every entry came after the start: none may have been trimmed.
  local info = redis.call('XINFO', 'STREAM', key)
  local length, added
  for i = 1, #info, 2 do
    if info[i] == 'length' then length = info[i + 1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
  if length ~= added then
    return {0, 'trimmed'}
  end
elseif not redis.call('XRANGE', key, after, after)[1] then
  return {0, 'trimmed'}  -- trimmed past it (more than MAXLEN since), or lost
end

local entries = redis.call('XRANGE', key, '(' .. after, till, 'COUNT', tonumber(ARGV[4]) + 1)
if #entries > tonumber(ARGV[4]) then
  return {0, 'too long'}  -- more than a replay may read: refused, never cut short
end
local out = {1}
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
end
return out
