-- admit.lua: one admission against every scope it touches (the key, each matching
-- model_limits entry; or a provider), all or nothing, in one round trip.
-- Clock: redis TIME (one clock for every replica).
--
-- Per scope i (1-based): KEYS[2i-1] = bucket hash, KEYS[2i] = in-flight sorted set.
--   The hash holds the requests_per_minute bucket (rl level, rt stamp s, rc capacity)
--   and the tokens_per_minute bucket (tl, tt, tc); a missing bucket is a full one, so
--   the hash expires when every bucket in it would be full again.
--   The sorted set holds one member per admitted request (score = lease expiry, ms),
--   so the slots of a crashed replica expire by themselves.
-- ARGV[1] token estimate, ARGV[2] member (request id), ARGV[3] lease ms,
-- ARGV[4 + 3(i-1)] rpm capacity, ARGV[5 + 3(i-1)] tpm capacity,
-- ARGV[6 + 3(i-1)] concurrency cap; -1 = no such limit (slots are still counted).
--
-- Returns {1, level, until_full} (the first scope's rpm bucket after taking, level
-- "-1" without one) or {0, scope, limit, wait_s, level, until_full}: the first limit
-- that fails (scope order, then 1 = rpm, 2 = tpm, 3 = concurrency), the longest wait
-- of all failing limits ("inf": never), and the first scope's rpm bucket untouched.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local EPS = 1e-9
local CONCURRENCY_RETRY_S = 1.0
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now_ms = math.floor(now * 1000)
local tokens = tonumber(ARGV[1])
local member = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local n = #KEYS / 2

local function fmt(x) return string.format('%.17g', x) end

-- The level now: refilled at capacity/60 per second, resized to `cap` keeping the
-- used fraction (a reload changes the capacity, not the time until full).
local function level_of(level, stamp, old, cap)
  level, stamp, old = tonumber(level), tonumber(stamp), tonumber(old)
  if level == nil or stamp == nil or old == nil then return cap end
  if now > stamp and level < old then
    level = math.min(old, level + (now - stamp) * old / 60)
  end
  if old ~= cap then
    local used = 0
    if old > 0 then used = (old - level) / old end
    level = cap * (1 - used)
  end
  return level
end

local function wait_for(level, cap, amount)
  if cap <= 0 then
    if amount > 0 then return math.huge end
    return 0
  end
  local needed = math.min(amount, cap)
  if level >= needed - EPS then return 0 end
  return (needed - level) / (cap / 60)
end

local function until_full(level, cap)
  if cap <= 0 or level >= cap then return 0 end
  return (cap - level) / (cap / 60)
end

local levels = {}
local first_scope, first_limit, longest = nil, nil, 0
local function fail(i, limit, wait)
  if first_scope == nil then first_scope, first_limit = i, limit end
  if wait > longest then longest = wait end
end

for i = 1, n do
  local bucket, inflight = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm = tonumber(ARGV[4 + 3 * (i - 1)])
  local tpm = tonumber(ARGV[5 + 3 * (i - 1)])
  local cc = tonumber(ARGV[6 + 3 * (i - 1)])
  local h = redis.call('HMGET', bucket, 'rl', 'rt', 'rc', 'tl', 'tt', 'tc')
  local s = {rpm = rpm, tpm = tpm, had_r = h[1] ~= false, had_t = h[4] ~= false}
  if rpm >= 0 then
    s.r = level_of(h[1] or nil, h[2] or nil, h[3] or nil, rpm)
    local w = wait_for(s.r, rpm, 1)
    if w > 0 then fail(i, 1, w) end
  end
  if tpm >= 0 then
    s.t = level_of(h[4] or nil, h[5] or nil, h[6] or nil, tpm)
    local w = wait_for(s.t, tpm, tokens)
    if w > 0 then fail(i, 2, w) end
  end
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now_ms)
  if cc >= 0 and redis.call('ZCARD', inflight) >= cc then fail(i, 3, CONCURRENCY_RETRY_S) end
  levels[i] = s
end

local first = levels[1]
if first_scope ~= nil then
  local level, full = -1, 0
  if first.rpm >= 0 then level, full = first.r, until_full(first.r, first.rpm) end
  return {0, first_scope, first_limit, fmt(longest), fmt(level), fmt(full)}
end

for i = 1, n do
  local bucket, inflight, s = KEYS[2 * i - 1], KEYS[2 * i], levels[i]
  local ttl = 0
  if s.rpm >= 0 then
    s.r = s.r - 1
    redis.call('HSET', bucket, 'rl', fmt(s.r), 'rt', fmt(now), 'rc', s.rpm)
    ttl = math.max(ttl, until_full(s.r, s.rpm))
  elseif s.had_r then
    redis.call('HDEL', bucket, 'rl', 'rt', 'rc')
  end
  if s.tpm >= 0 then
    s.t = s.t - tokens
    redis.call('HSET', bucket, 'tl', fmt(s.t), 'tt', fmt(now), 'tc', s.tpm)
    ttl = math.max(ttl, until_full(s.t, s.tpm))
  elseif s.had_t then
    redis.call('HDEL', bucket, 'tl', 'tt', 'tc')
  end
  if s.rpm >= 0 or s.tpm >= 0 then
    redis.call('PEXPIRE', bucket, math.ceil(ttl * 1000) + 1000)
  end
  redis.call('ZADD', inflight, now_ms + lease_ms, member)
  redis.call('PEXPIRE', inflight, lease_ms + 1000)
end

local level, full = -1, 0
if first.rpm >= 0 then level, full = first.r, until_full(first.r, first.rpm) end
return {1, fmt(level), fmt(full)}
