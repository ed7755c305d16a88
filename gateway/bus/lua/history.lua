-- Events of several rooms, each after its own position, for recovery and catch-up.
-- KEYS: the rooms' history streams.  ARGV[2i-1]: the stream id "<ms>-<seq>" to start after in
-- KEYS[i] (the client's offset, or later for a room it joined after that offset); ARGV[2i]: the
-- id to stop at, inclusive ("+" for none; a room the client left while away stops at the leave).
-- Returns {ok, m1, m2, ...}: ok = 1 with the messages after the offset (each room in order;
-- the caller merges rooms by seq), or ok = 0 when a room lost an entry after the offset.
--
-- Trimming (MAXLEN, MINID) removes the oldest entries and leaves no count of them, so each
-- entry carries its predecessor's id ('p', set by publish.lua). If the first entry after the
-- offset has a predecessor that is itself after the offset, that predecessor was trimmed: the
-- replay would have a hole. Trimming always keeps the newest entry, so when nothing follows
-- the offset, nothing after it was ever added.
local function parse(id)
  local d = string.find(id, "-", 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end

local out = {1}
for k, key in ipairs(KEYS) do
  local after, till = ARGV[2 * k - 1], ARGV[2 * k]
  local a_ms, a_seq = parse(after)
  local function newer(id)  -- is stream id `id` strictly after this room's start?
    local ms, seq = parse(id)
    return ms > a_ms or (ms == a_ms and seq > a_seq)
  end
  local first = redis.call("XRANGE", key, "(" .. after, "+", "COUNT", 1)
  if first[1] then
    local fields = first[1][2]
    local prev = "0-0"
    for i = 1, #fields, 2 do
      if fields[i] == "p" then prev = fields[i + 1] end
    end
    if newer(prev) then
      return {0}
    end
  end
  local entries = first
  if till ~= "+" or first[1] then
    entries = redis.call("XRANGE", key, "(" .. after, till)
  end
  for _, entry in ipairs(entries) do
    out[#out + 1] = entry[2][2]
  end
end
return out
