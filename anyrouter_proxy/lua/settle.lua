-- settle.lua: settle a reservation to the real cost (0 = cancel), or record spend made
-- without one. Units of 1e-10 USD (see reserve.lua). Clock: redis TIME.
-- KEYS[1] credit hash, KEYS[2] reservations hash, KEYS[3] reservation expiries,
-- KEYS[4] done set (ids of spend recorded without a reservation, for a while).
-- ARGV[1] id, ARGV[2] actual cost, ARGV[3] "1": spend without a reservation (made on a
-- replica's local ledger while Redis was unreachable), ARGV[4] done ttl ms,
-- ARGV[5] spend floor: the highest spend the replica saw; when Redis has no spend (it
-- lost its data) the spend restarts from there.
-- Idempotent: a reservation is settled once (its entry is removed); spend without one is
-- recorded once per id within the done ttl. Returns {1, spent} if applied, {0, spent}
-- if not (already settled, or the reservation expired: its spend is then only in the
-- usage log).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id, actual, orphan = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local ttl_ms, floor = tonumber(ARGV[4]), tonumber(ARGV[5])

local function fmt(x) return string.format('%.0f', x) end

if orphan then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
  if redis.call('ZADD', KEYS[4], 'NX', now_ms + ttl_ms, id) == 0 then
    return {0, redis.call('HGET', KEYS[1], 'spent') or '-1'}
  end
  redis.call('PEXPIRE', KEYS[4], ttl_ms)
else
  local held = redis.call('HGET', KEYS[2], id)
  if not held then return {0, redis.call('HGET', KEYS[1], 'spent') or '-1'} end
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  local reserved = (tonumber(redis.call('HGET', KEYS[1], 'reserved') or nil) or 0) - tonumber(held)
  if reserved < 0 or redis.call('HLEN', KEYS[2]) == 0 then reserved = 0 end
  redis.call('HSET', KEYS[1], 'reserved', fmt(reserved))
end

local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or nil) or floor
if spent > 0 or actual > 0 then
  redis.call('HSET', KEYS[1], 'spent', fmt(spent + actual))
end
return {1, fmt(spent + actual)}
