#!lua
-- The replicas where a user has a socket (half of is_online: see replicas.lua).
-- KEYS[1] <prefix>:{user:<id>}:on
return redis.call('SMEMBERS', KEYS[1])
