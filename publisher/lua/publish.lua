#!lua
-- The one way events onto the bus: docs/wire-protocol.md, "Publishing an event".
-- One call publishes N >= 1 events (batched: the per-call cost of a script, its round trip and
-- Redis's wake-up, is paid once for all of them). For each event, history and the publish happen
-- in one atomic step; the events of one call are published in argument order.
--
-- Interface (batched; other clients, e.g. the Node emitter, call it exactly so):
--   KEYS[i]        the history stream of event i: <key prefix>:{<room>}:h      (i = 1..N)
--   ARGV[1]        history max length (approximate MAXLEN ~); "0": keep no history, but
--                  positions still grow within each room
--   ARGV[2]        history lifetime, ms (PEXPIRE of each stream written)
--   ARGV[1+2i]     the channel of event i: <channel prefix>/notifications#{<room>}#
--   ARGV[2+2i]     the envelope JSON of event i, without "o", ending with "}"
-- Returns a flat array {position_1, receivers_1, ..., position_N, receivers_N}: each event's
-- stream entry ID (its position in its room) and how many shard subscribers received it.
-- Every envelope is checked before the first XADD: a malformed one refuses the whole call, with
-- an error naming its index, and nothing is written.
-- In a Redis Cluster all keys of one call are in one slot (callers group events by slot); the
-- shebang makes Redis refuse keys, or a channel, of another slot. On a single Redis or Sentinel
-- one call may carry any rooms.
local n = #KEYS
if #ARGV ~= 2 + 2 * n then
  return redis.error_reply('ERR publish.lua: ' .. #ARGV .. ' arguments for ' .. n ..
    ' keys; expected maxlen, lifetime, then a channel and an envelope per key')
end
for i = 1, n do
  if string.byte(ARGV[2 + 2 * i], -1) ~= 125 then  -- 125: '}'
    return redis.error_reply('ERR publish.lua: envelope ' .. i ..
      ' must be a JSON object ending with }; nothing was published')
  end
end
local maxlen, lifetime = ARGV[1], ARGV[2]
local keep = maxlen ~= '0'
local expired = {}
local out = {}
for i = 1, n do
  local key, envelope = KEYS[i], ARGV[2 + 2 * i]
  local id
  if keep then
    id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'm', envelope)
  else
    -- No history kept (no recovery), but positions must still grow within the room, or a
    -- replica would drop a second event of the same millisecond as one it already has: an
    -- empty stream keeps its last ID for that.
    id = redis.call('XADD', key, 'MAXLEN', '0', '*', 'm', '')
  end
  if not expired[key] then  -- once per stream and call: a burst to one room pays it once
    expired[key] = true
    redis.call('PEXPIRE', key, keep and lifetime or 60000)
  end
  out[2 * i - 1] = id
  out[2 * i] = redis.call('SPUBLISH', ARGV[1 + 2 * i],
    string.sub(envelope, 1, -2) .. ',"o":"' .. id .. '"}')
end
return out
