-- Events of several rooms after one offset, for recovery and catch-up.
-- KEYS: the rooms' history streams.  ARGV[1]: the offset's stream id "<ms>-<seq>".
-- Returns {ok, m1, m2, ...}: ok = 1 with the messages after the offset (each room in order;
-- the caller merges rooms by seq), or ok = 0 when a room lost an entry after the offset
-- (trimmed by MAXLEN/MINID or deleted): then recovery must say "not recovered".
local after = ARGV[1]
local dash = string.find(after, "-", 1, true)
local a_ms, a_seq = tonumber(string.sub(after, 1, dash - 1)), tonumber(string.sub(after, dash + 1))

local function newer(id)  -- is stream id `id` strictly after the offset?
  local d = string.find(id, "-", 1, true)
  local ms, seq = tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
  return ms > a_ms or (ms == a_ms and seq > a_seq)
end

local out = {1}
for _, key in ipairs(KEYS) do
  if redis.call("EXISTS", key) == 1 then
    local info = redis.call("XINFO", "STREAM", key)
    for i = 1, #info, 2 do
      if info[i] == "max-deleted-entry-id" then
        if newer(info[i + 1]) then
          return {0}
        end
      end
    end
    local entries = redis.call("XRANGE", key, "(" .. after, "+")
    for _, entry in ipairs(entries) do
      out[#out + 1] = entry[2][2]
    end
  end
end
return out
