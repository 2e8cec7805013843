-- reserve.lua: hold a request's worst-case cost against a key's credit, or refuse.
-- Amounts are integers in units of 1e-10 USD (credits.COST_DECIMALS), exact in Lua's
-- doubles up to 2^53 units (about $900,000). Clock: redis TIME.
-- KEYS[1] credit hash {spent, reserved}, KEYS[2] reservations hash (id -> amount),
-- KEYS[3] reservation expiries sorted set (id -> expiry ms).
-- ARGV[1] amount, ARGV[2] credits (-1: unlimited: always reserved, so spend is recorded),
-- ARGV[3] reservation id, ARGV[4] lease ms, ARGV[5] spend floor: this replica's lower
-- bound of the key's spend, written only when Redis has no spend (it lost its data).
-- A key with a budget adds KEYS[4], the spend of its current period (a string, expiring
-- after the period), and ARGV[6] budget, ARGV[7] period spend floor (as ARGV[5]),
-- ARGV[8] the period key's expiry (Unix ms): period spend + reserved + amount must fit.
-- Returns {1 | 0 | 2, spent, reserved, period spent (-1: no budget)}: reserved (then
-- `reserved` includes it), refused by the credits (0) or refused by the budget (2).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local amount, credits = tonumber(ARGV[1]), tonumber(ARGV[2])
local id, lease_ms, floor = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

local function fmt(x) return string.format('%.0f', x) end

-- Reservations past their lease belong to a replica that died before settling them.
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or nil) or 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms, 'LIMIT', 0, 1000)
for _, old in ipairs(expired) do
  local held = redis.call('HGET', KEYS[2], old)
  if held then
    reserved = reserved - tonumber(held)
    redis.call('HDEL', KEYS[2], old)
  end
  redis.call('ZREM', KEYS[3], old)
end
if reserved < 0 or redis.call('HLEN', KEYS[2]) == 0 then reserved = 0 end

local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or nil)
if spent == nil then
  spent = floor
  if floor > 0 then redis.call('HSET', KEYS[1], 'spent', fmt(floor)) end
end

local period_spent = -1
if KEYS[4] then
  period_spent = tonumber(redis.call('GET', KEYS[4]) or nil)
  if period_spent == nil then
    period_spent = tonumber(ARGV[7])
    if period_spent > 0 then redis.call('SET', KEYS[4], fmt(period_spent), 'PXAT', ARGV[8]) end
  end
end

local refused = nil
if credits >= 0 and spent + reserved + amount > credits then
  refused = 0
elseif period_spent >= 0 and period_spent + reserved + amount > tonumber(ARGV[6]) then
  refused = 2
end
if refused then
  if #expired > 0 then redis.call('HSET', KEYS[1], 'reserved', fmt(reserved)) end
  return {refused, fmt(spent), fmt(reserved), fmt(period_spent)}
end
reserved = reserved + amount
redis.call('HSET', KEYS[1], 'reserved', fmt(reserved))
redis.call('HSET', KEYS[2], id, fmt(amount))
redis.call('ZADD', KEYS[3], now_ms + lease_ms, id)
return {1, fmt(spent), fmt(reserved), fmt(period_spent)}
