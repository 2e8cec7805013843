-- credit_state.lua: a key's spent and reserved amounts (units of 1e-10 USD), after
-- dropping reservations past their lease (see reserve.lua).
-- KEYS[1] credit hash, KEYS[2] reservations hash, KEYS[3] reservation expiries;
-- ARGV[1] spend floor, reported when Redis has no spend. Returns {spent, reserved}, and
-- with KEYS[4] (a budget period's spend, see reserve.lua) and ARGV[2] (its floor)
-- {spent, reserved, period spent}.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function fmt(x) return string.format('%.0f', x) end

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
if #expired > 0 then redis.call('HSET', KEYS[1], 'reserved', fmt(reserved)) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or nil) or tonumber(ARGV[1])
if KEYS[4] then
  local period_spent = tonumber(redis.call('GET', KEYS[4]) or nil) or tonumber(ARGV[2])
  return {fmt(spent), fmt(reserved), fmt(period_spent)}
end
return {fmt(spent), fmt(reserved)}
