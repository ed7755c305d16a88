-- The bus's current position: {epoch, ms, seq}. A Redis that never saw a publish gets its
-- epoch here, as publish.lua would give it (ARGV[1]: a fresh random candidate).
-- KEYS[1]: <prefix>:clock
if redis.call("HSETNX", KEYS[1], "epoch", ARGV[1]) == 1 then
  redis.call("HSETNX", KEYS[1], "seq", 0)
  redis.call("HSETNX", KEYS[1], "ms", 0)
end
return redis.call("HMGET", KEYS[1], "epoch", "ms", "seq")
