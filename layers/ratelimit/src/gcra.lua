-- Quotas across replicas: every check of a request conforms and is
-- charged, or none is.
--
-- KEYS[i]           check i's state: a rate's theoretical arrival time
--                   in µs, or a budget window's spending
-- ARGV[4i-3 .. 4i]  check i: kind, a, b, cost where kind is
--                   'r' (a rate: a = emission interval µs, b = tolerance µs),
--                   'b' or 's' (a budget, enforced or shadow: a = limit,
--                   b = ms until its window ends); a budget refuses once
--                   what it spent reaches its limit
--
-- Returns {1, per check: the rate's used µs or the budget's spending}
-- when allowed, {0, index of the failing check (from 0), µs until it
-- conforms}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
for i = 1, #KEYS do
  local kind = ARGV[4 * i - 3]
  local a = tonumber(ARGV[4 * i - 2])
  local b = tonumber(ARGV[4 * i - 1])
  local cost = tonumber(ARGV[4 * i])
  if kind == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then
      tat = now
    end
    local new_tat = tat + a * cost
    local allowed_at = new_tat - b
    if allowed_at > now then
      return { 0, i - 1, allowed_at - now }
    end
    next[i] = new_tat
  else
    local spent = tonumber(redis.call('GET', KEYS[i]) or 0)
    if kind == 'b' and cost > 0 and spent >= a then
      -- Spent: refused until every spent budget of the set is whole
      -- again (a day's and a month's: the month's end).
      local index, wait = i, b
      for j = i + 1, #KEYS do
        if ARGV[4 * j - 3] == 'b' then
          local other = tonumber(redis.call('GET', KEYS[j]) or 0)
          local ends = tonumber(ARGV[4 * j - 1])
          if other >= tonumber(ARGV[4 * j - 2]) and ends > wait then
            index, wait = j, ends
          end
        end
      end
      return { 0, index - 1, wait * 1000 }
    end
    next[i] = spent + cost
  end
end
local result = { 1 }
for i = 1, #KEYS do
  if ARGV[4 * i - 3] == 'r' then
    -- The key lives as long as it says anything: a full bucket is no key.
    local ms = math.ceil((next[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', ms)
    result[#result + 1] = next[i] - now
  else
    -- The window's key outlives it a minute: a late correction finds it.
    redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', tonumber(ARGV[4 * i - 1]) + 60000)
    result[#result + 1] = next[i]
  end
end
return result
