-- release.lua: give an admission's concurrency slots back.
-- KEYS: in-flight sorted sets (see admit.lua); ARGV[1]: the admission's member.
for _, inflight in ipairs(KEYS) do redis.call('ZREM', inflight, ARGV[1]) end
return 1
