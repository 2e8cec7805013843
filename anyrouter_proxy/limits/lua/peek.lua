-- peek.lua: read a scope without consuming: its requests_per_minute bucket (for the
-- X-RateLimit-* headers) and its number of requests in flight. Clock: redis TIME.
-- KEYS[1] bucket hash, KEYS[2] in-flight sorted set (see admit.lua);
-- ARGV[1] rpm capacity (-1: none). Returns {level, until_full, in_flight}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now_ms = math.floor(now * 1000)
local cap = tonumber(ARGV[1])

local function fmt(x) return string.format('%.17g', x) end

local level, full = -1, 0
if cap >= 0 then
  local h = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'rc')
  local l, stamp, old = tonumber(h[1] or nil), tonumber(h[2] or nil), tonumber(h[3] or nil)
  level = cap
  if l ~= nil and stamp ~= nil and old ~= nil then
    if now > stamp and l < old then l = math.min(old, l + (now - stamp) * old / 60) end
    if old ~= cap then
      local used = 0
      if old > 0 then used = (old - l) / old end
      l = cap * (1 - used)
    end
    level = l
  end
  if cap > 0 and level < cap then full = (cap - level) / (cap / 60) end
end
local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. now_ms, '+inf')
return {fmt(level), fmt(full), in_flight}
