#!lua
-- The one way an event onto the bus: docs/wire-protocol.md, "Publishing an event".
-- History and the publish happen in one atomic step, on the room's shard (every name of a room
-- carries the room as its hash tag; the shebang makes Redis refuse a channel of another slot).
-- KEYS[1] the room's history stream (<prefix>:{<room>}:h)
-- ARGV[1] the room's channel   ARGV[2] envelope JSON without "o", ending with "}"
-- ARGV[3] history max length (approximate; "0": keep no history)   ARGV[4] history lifetime, ms
-- Returns {position, receivers}.
local envelope = ARGV[2]
if string.sub(envelope, -1) ~= '}' then
  return redis.error_reply('ERR envelope must be a JSON object ending with }')
end
local id
if ARGV[3] ~= '0' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', envelope)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  -- No history kept (no recovery), but positions must still grow within the room, or a
  -- replica would drop a second event of the same millisecond as one it already has: an
  -- empty stream keeps its last ID for that.
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '0', '*', 'm', '')
  redis.call('PEXPIRE', KEYS[1], 60000)
end
return {id, redis.call('SPUBLISH', ARGV[1], string.sub(envelope, 1, -2) .. ',"o":"' .. id .. '"}')}
