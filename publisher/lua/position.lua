#!lua
-- A room's position now, where a socket entering it starts (docs/wire-protocol.md, "Positions").
-- KEYS[1] the room's history stream.
-- Returns the newest entry's ID; for an empty or missing stream, "<ms-1>-18446744073709551615"
-- with ms the server's time now: "empty at ms", before every entry added from now on.
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  return newest[1][1]
end
local now = redis.call('TIME')
return string.format('%d-18446744073709551615', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - 1)
