-- tokens.lua: reconcile a tokens_per_minute estimate with the real usage, in every
-- bucket the admission took it from. Clock: redis TIME.
-- KEYS: bucket hashes (see admit.lua). ARGV[1] = real - estimate (tokens; > 0 takes
-- more, possibly into debt; < 0 gives back, up to the capacity); ARGV[1 + i] = the
-- capacity of KEYS[i] at admission, used only when the bucket is gone (full).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local diff = tonumber(ARGV[1])

local function fmt(x) return string.format('%.17g', x) end

for i, bucket in ipairs(KEYS) do
  local h = redis.call('HMGET', bucket, 'tl', 'tt', 'tc')
  local level, stamp, cap = tonumber(h[1] or nil), tonumber(h[2] or nil), tonumber(h[3] or nil)
  if level == nil or stamp == nil or cap == nil then
    cap = tonumber(ARGV[1 + i])
    level = cap  -- gone means full
  elseif now > stamp and level < cap then
    level = math.min(cap, level + (now - stamp) * cap / 60)
  end
  if diff > 0 or level < cap then
    if diff > 0 then level = level - diff else level = math.min(cap, level - diff) end
    redis.call('HSET', bucket, 'tl', fmt(level), 'tt', fmt(now), 'tc', cap)
    local full_ms = 1000
    if cap > 0 and level < cap then full_ms = math.ceil((cap - level) / (cap / 60) * 1000) + 1000 end
    if redis.call('PTTL', bucket) < full_ms then redis.call('PEXPIRE', bucket, full_ms) end
  end
end
return 1
