-- The one way onto the bus: docs/wire-protocol.md, "Publishing: the script".
-- Ordering, history and the publish happen in one atomic step.
-- KEYS[1] clock hash (epoch, seq, ms)
-- KEYS[2] the room's history stream, or "" for none (control messages, broadcasts)
-- ARGV[1] channel   ARGV[2] envelope JSON without "o", ending with "}"
-- ARGV[3] epoch candidate, used only if the clock does not exist yet
-- ARGV[4] history max length (approximate)   ARGV[5] history window, ms
-- Returns {offset, receivers}.
local clock, history, envelope = KEYS[1], KEYS[2], ARGV[2]
if string.sub(envelope, -1) ~= '}' then
  return redis.error_reply('ERR envelope must be a JSON object ending with }')
end

-- 1. A Redis that lost its data gets a new epoch: older offsets become unrecoverable.
local epoch = redis.call('HGET', clock, 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', clock, 'epoch', epoch)
end

-- 2. One counter for every room; ms never goes back, even if the server's clock does.
local seq = redis.call('HINCRBY', clock, 'seq', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('HGET', clock, 'ms'))
if last and last > ms then ms = last end
redis.call('HSET', clock, 'ms', string.format('%d', ms))

-- 3. The offset goes in as the envelope's last member.
local id = string.format('%d-%d', ms, seq)
local offset = epoch .. ':' .. id
local message = string.sub(envelope, 1, -2) .. ',"o":"' .. offset .. '"}'

-- 4. History, trimmed by length and by age, and gone 2 windows after the last write.
-- Each entry names its predecessor in the stream ('p'): trimming leaves no trace in the stream
-- (max-deleted-entry-id only follows XDEL), so recovery checks that the first entry after an
-- offset follows on from it (history.lua) and never replays a history with a hole.
if history ~= '' then
  local window = tonumber(ARGV[5])
  local newest = redis.call('XREVRANGE', history, '+', '-', 'COUNT', 1)
  local prev = '0-0'
  if newest[1] then prev = newest[1][1] end
  local added = redis.pcall('XADD', history, 'MAXLEN', '~', ARGV[4], id, 'm', message, 'p', prev)
  if type(added) == 'table' and added.err then
    -- The stream is ahead of the clock, so it predates the current epoch (the clock was lost
    -- and the stream was not): none of it can be replayed any more. Start it again.
    redis.call('DEL', history)
    redis.call('XADD', history, 'MAXLEN', '~', ARGV[4], id, 'm', message, 'p', '0-0')
  end
  redis.call('XTRIM', history, 'MINID', '~', string.format('%d', ms - window))
  redis.call('PEXPIRE', history, string.format('%d', 2 * window))
end

-- 5.
return {offset, redis.call('PUBLISH', ARGV[1], message)}
