-- GCRA across replicas: every check of a request conforms and is
-- charged, or none is.
--
-- KEYS[i]           the theoretical arrival time of check i, in µs
-- ARGV[3i-2 .. 3i]  check i's emission interval (µs), tolerance (µs), cost
--
-- Returns {1, used µs of each check...} when allowed,
--         {0, index of the failing check (from 0), µs until it conforms}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval * cost
  local allowed_at = new_tat - tolerance
  if allowed_at > now then
    return { 0, i - 1, allowed_at - now }
  end
  next[i] = new_tat
end
local result = { 1 }
for i = 1, #KEYS do
  -- The key lives as long as it says anything: a full bucket is no key.
  local ms = math.ceil((next[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', ms)
  result[#result + 1] = next[i] - now
end
return result
