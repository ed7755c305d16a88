-- Load a recoverable session and the user's revocation time in one round trip.
-- KEYS[1]: <prefix>:s:<pid>.  ARGV[1]: the key prefix ("ngw").
-- Returns {} when there is no session, else {fields..., "revoked", <ms or "">} as a flat
-- hash reply with the revocation time appended.
local fields = redis.call("HGETALL", KEYS[1])
if #fields == 0 then
  return {}
end
local user
for i = 1, #fields, 2 do
  if fields[i] == "{{field.user}}" then
    user = fields[i + 1]
  end
end
local revoked = ""
if user then
  revoked = redis.call("GET", ARGV[1] .. ":revoked:" .. user) or ""
end
fields[#fields + 1] = "revoked"
fields[#fields + 1] = revoked
return fields
