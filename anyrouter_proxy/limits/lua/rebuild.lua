-- rebuild.lua: put back what Redis lost (a restart without persistence, FLUSHALL, an
-- eviction): the keys' spend, rebuilt from the usage log, and one replica's open credit
-- reservations. The spend marker says whether Redis still holds the spend it was given:
-- the replica that finds it gone rebuilds ("claim"), the others, seeing a new marker,
-- put back their own reservations ("join"), so that the settlements to come find them.
-- Clock: redis TIME.
--
-- KEYS[1] the spend marker; then per key: credit hash {spent, reserved}, reservations
-- hash (id -> amount), reservation expiries (id -> ms) (see reserve.lua).
-- ARGV[1] "claim" (only while the marker is gone: writes it, then each key's spend) or
-- "join" (only while the marker is ARGV[2]); ARGV[2] the marker to write (claim) or the
-- one seen (join); ARGV[3] lease ms; then per key: its spend (units of 1e-10 USD; -1:
-- leave it), the number of reservations, then that many pairs of id and amount.
-- Returns {1, marker} when done, or {0, marker or ""} when the marker was not as expected.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local mode, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local marker = redis.call('GET', KEYS[1])
if mode == 'claim' and marker then return {0, marker} end
if mode == 'join' and marker ~= token then return {0, marker or ''} end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function int(x) return string.format('%.0f', x) end

if mode == 'claim' then redis.call('SET', KEYS[1], token) end
local a = 4
for k = 2, #KEYS, 3 do
  local credit, res, resx = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local spent, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  if spent >= 0 then redis.call('HSET', credit, 'spent', int(spent)) end
  local added = 0
  for i = 1, n do
    local id, amount = ARGV[a + 2 * i], ARGV[a + 2 * i + 1]
    if redis.call('HSETNX', res, id, amount) == 1 then
      redis.call('ZADD', resx, now_ms + lease_ms, id)
      added = added + tonumber(amount)
    end
  end
  if added > 0 then
    local reserved = tonumber(redis.call('HGET', credit, 'reserved') or nil) or 0
    redis.call('HSET', credit, 'reserved', int(reserved + added))
  end
  a = a + 2 + 2 * n
end
return {1, token}
