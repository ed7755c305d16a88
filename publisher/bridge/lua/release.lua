#!lua
-- Give the lease up (a bridge stopping): only if this bridge holds it.
-- KEYS[1] the lease key   ARGV[1] this bridge's token. Returns 1 if it was released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
