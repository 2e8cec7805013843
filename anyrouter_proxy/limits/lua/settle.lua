-- settle.lua: what requests leave behind when they end, in one round trip: any number of
-- these operations, applied in order (all keys of one call share one owner's hash tag).
-- Clock: redis TIME.
--
--   t  tokens: reconcile a tokens_per_minute estimate with the real usage.
--      KEYS: the admission's bucket hashes (see admit.lua); ARGV: real - estimate
--      (tokens; > 0 takes more, possibly into debt; < 0 gives back, up to the
--      capacity), then per key its capacity at admission (used when the bucket is gone,
--      that is full).
--   r  release: give an admission's concurrency slots back.
--      KEYS: the in-flight sorted sets; ARGV: the admission's member.
--   s  settle: a credit reservation to the real cost (0 = cancel), or spend made
--      without one (on a replica's local ledger while Redis was unreachable).
--      KEYS: credit hash {spent, reserved}, reservations hash (id -> amount),
--      reservation expiries (id -> ms), done set (ids of spend recorded without a
--      reservation, for a while), then (optional) the spend marker (redis_quota.py; gone
--      when Redis lost its data: then a reservation that vanished still has its spend
--      counted, as spend without one). ARGV: id, real cost (units of 1e-10 USD, see
--      reserve.lua), "1" when without a reservation, done ttl ms, spend floor (the
--      highest spend the replica saw: where Redis has no spend, it lost its data, and
--      the spend restarts from there).
--      Idempotent: a reservation is settled once (its entry is removed), spend without
--      one is recorded once per id within the done ttl.
--      A key with a budget adds a sixth key (after the marker), the spend of the period
--      the reservation was made in (see reserve.lua), and two args: its floor and expiry
--      (Unix ms); an applied settlement then answers "1 spent period_spent".
--
-- ARGV: the number of operations, then per operation: kind, #keys, #args, args...
-- KEYS: every operation's keys, one after the other.
-- Returns one entry per operation: 1 for t and r; for s "applied spent" (applied 1,
-- 2 = counted though its reservation was gone with the marker, or 0 = nothing to do:
-- already settled, or the reservation expired and its spend is in the usage log only;
-- spent -1 = none).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%.0f', x) end

local function tokens(keys, args)
  local diff = tonumber(args[1])
  for i, bucket in ipairs(keys) do
    local h = redis.call('HMGET', bucket, 'tl', 'tt', 'tc')
    local level, stamp, cap = tonumber(h[1] or nil), tonumber(h[2] or nil), tonumber(h[3] or nil)
    if level == nil or stamp == nil or cap == nil then
      cap = tonumber(args[1 + i])
      level = cap  -- gone means full
    elseif now > stamp and level < cap then
      level = math.min(cap, level + (now - stamp) * cap / 60)
    end
    if diff > 0 or level < cap then
      if diff > 0 then level = level - diff else level = math.min(cap, level - diff) end
      redis.call('HSET', bucket, 'tl', fmt(level), 'tt', fmt(now), 'tc', cap)
      local full_ms = 1000
      if cap > 0 and level < cap then
        full_ms = math.ceil((cap - level) / (cap / 60) * 1000) + 1000
      end
      if redis.call('PTTL', bucket) < full_ms then redis.call('PEXPIRE', bucket, full_ms) end
    end
  end
  return 1
end

local function release(keys, args)
  for _, inflight in ipairs(keys) do redis.call('ZREM', inflight, args[1]) end
  return 1
end

-- The cost joins the budget period's spend, which restarts from the floor if Redis lost it.
local function add_to_period(key, actual, floor, expire_at)
  local spent = tonumber(redis.call('GET', key) or nil) or tonumber(floor)
  if spent > 0 or actual > 0 then redis.call('SET', key, int(spent + actual), 'PXAT', expire_at) end
  return ' ' .. int(spent + actual)
end

local function settle(keys, args)
  local id, actual, orphan = args[1], tonumber(args[2]), args[3] == '1'
  local ttl_ms, floor = tonumber(args[4]), tonumber(args[5])
  local held = not orphan and redis.call('HGET', keys[2], id)
  local lost = not held and keys[5] ~= nil and redis.call('EXISTS', keys[5]) == 0
  if orphan or lost then
    redis.call('ZREMRANGEBYSCORE', keys[4], '-inf', now_ms)
    if redis.call('ZADD', keys[4], 'NX', now_ms + ttl_ms, id) == 0 then
      return '0 ' .. (redis.call('HGET', keys[1], 'spent') or '-1')
    end
    redis.call('PEXPIRE', keys[4], ttl_ms)
  else
    if not held then return '0 ' .. (redis.call('HGET', keys[1], 'spent') or '-1') end
    redis.call('HDEL', keys[2], id)
    redis.call('ZREM', keys[3], id)
    local reserved = (tonumber(redis.call('HGET', keys[1], 'reserved') or nil) or 0)
      - tonumber(held)
    if reserved < 0 or redis.call('HLEN', keys[2]) == 0 then reserved = 0 end
    redis.call('HSET', keys[1], 'reserved', int(reserved))
  end
  local spent = tonumber(redis.call('HGET', keys[1], 'spent') or nil) or floor
  if spent > 0 or actual > 0 then redis.call('HSET', keys[1], 'spent', int(spent + actual)) end
  local period = ''
  if keys[6] then period = add_to_period(keys[6], actual, args[6], args[7]) end
  if lost and not orphan then return '2 ' .. int(spent + actual) .. period end
  return '1 ' .. int(spent + actual) .. period
end

local OPS = {t = tokens, r = release, s = settle}
local results = {}
local a, k = 2, 1
for _ = 1, tonumber(ARGV[1]) do
  local kind, nkeys, nargs = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = {}, {}
  for i = 1, nkeys do keys[i] = KEYS[k + i - 1] end
  for i = 1, nargs do args[i] = ARGV[a + 2 + i] end
  k, a = k + nkeys, a + 3 + nargs
  results[#results + 1] = OPS[kind](keys, args)
end
return results
