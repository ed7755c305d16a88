#!lua
-- The bridge's lease: take it if nobody holds it, or renew it if we do (compare, then extend),
-- in one step. KEYS[1] the lease key   ARGV[1] this bridge's token   ARGV[2] TTL, ms
-- Returns 1 when this bridge holds the lease for ARGV[2] ms from now, else 0.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
