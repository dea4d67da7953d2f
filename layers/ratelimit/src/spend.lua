-- Corrects a budget window's spending by `delta` once the answer says
-- what was generated; never below 0, and a window that is gone (it
-- ended) stays gone.
--
-- KEYS[1] the window's spending; ARGV[1] delta.

local spent = redis.call('GET', KEYS[1])
if not spent then
  return 0
end
local n = tonumber(spent) + tonumber(ARGV[1])
if n < 0 then
  n = 0
end
redis.call('SET', KEYS[1], string.format('%.0f', n), 'KEEPTTL')
return 1
