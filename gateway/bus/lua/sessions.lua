#!lua
-- A recoverable session and its user's revocation time, in one round trip on the user's shard.
-- KEYS[1] <prefix>:{user:<id>}:s:<pid>   KEYS[2] <prefix>:{user:<id>}:revoked
-- Returns {} when there is no session, else its fields as a flat hash reply with
-- "revoked", <ms or "">  appended.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return {}
end
fields[#fields + 1] = 'revoked'
fields[#fields + 1] = redis.call('GET', KEYS[2]) or ''
return fields
