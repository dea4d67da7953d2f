-- One pool's permits across replicas, in one atomic step.
--
-- KEYS[1] queue    sorted set of waiting tickets, best first
-- KEYS[2] leases   sorted set of granted tickets, scored by lease expiry (ms)
-- KEYS[3] capacity the pool's capacity, when an operator set one
-- KEYS[4] replicas sorted set of live replicas, scored by expiry (ms)
-- KEYS[5] hold     the pool's average hold of a permit (ms), from releases
--
-- ARGV[1] op: enqueue | cancel | release | renew | tick
-- ARGV[2] ticket (`replica|seq|level|agent`) for enqueue, cancel, release;
--         its level is priority - 1, plus 10 if the replica predicts it
--         gives a permit back within lend_within, plus 20 if it cannot
--         predict (then the pool's average hold decides): a marked ticket
--         is below every reserve for a script that does not lend
-- ARGV[3] the ticket's level (priority - 1), for enqueue
-- ARGV[4] aging in ms (0: none)
-- ARGV[5] lease ttl in ms
-- ARGV[6] capacity from the configuration
-- ARGV[7] reserved permits
-- ARGV[8] levels below this may take reserved permits
-- ARGV[9] this replica
-- ARGV[10] the channel grants are published on, minus the replica
-- ARGV[11] the most permits one agent may hold (0: no cap)
-- ARGV[12] lend_within in ms (0: reserved permits are never lent)
-- ARGV[13..] tickets this replica holds, for renew: (re-)added, so the
--          permits running here count after Redis lost its data, and the
--          local pool's permits taken while it was away count too; for
--          release, how long the permit was held (ms)
--
-- Returns { permits held, capacity, live replicas, reserved permits lent,
-- the average hold in ms (-1: none yet), then per level 0 to 9 the
-- tickets a fresh arrival there would wait behind, then granted
-- tickets... }.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local ttl = tonumber(ARGV[5])

-- This replica is alive for another lease.
redis.call('ZADD', KEYS[4], now + ttl, ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)

-- The score of a ticket queued now at `level`. With aging, a level is
-- worth `aging` ms of waiting: a ticket one level lower that has waited
-- `aging` longer is as good.
local aging = tonumber(ARGV[4])
local function score_now(level)
  if aging > 0 then
    return level * aging + now
  end
  return level * 1e13 + now
end

if op == 'enqueue' then
  redis.call('ZADD', KEYS[1], score_now(tonumber(ARGV[3])), ARGV[2])
elseif op == 'cancel' or op == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  local held_ms = op == 'release' and ARGV[13] and tonumber(ARGV[13])
  if held_ms then
    local average = tonumber(redis.call('GET', KEYS[5]) or held_ms)
    redis.call('SET', KEYS[5], average + 0.2 * (held_ms - average))
  end
elseif op == 'renew' then
  for i = 13, #ARGV do
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
  end
end

-- A dead replica's permits come back when their leases run out.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

local capacity = tonumber(redis.call('GET', KEYS[3]) or ARGV[6])
local held = redis.call('ZCARD', KEYS[2])
local reserve = math.min(tonumber(ARGV[7]), math.max(capacity - 1, 0))
local up_to = tonumber(ARGV[8])
local per_agent = tonumber(ARGV[11])
local lend_within = tonumber(ARGV[12])
local granted = {}
local lent = 0

-- With a cap per agent, what each agent holds: the leases are few (about
-- the capacity), so they are counted here rather than kept elsewhere.
local holding = {}
if per_agent > 0 then
  for _, ticket in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local agent = string.match(ticket, '^[^|]*|%d+|%d+|(.*)$')
    if agent then
      holding[agent] = (holding[agent] or 0) + 1
    end
  end
end

-- Whether a marked ticket may borrow a reserved permit: 1, its replica
-- predicts it short; 2, no prediction, so the pool's average hold.
local average_hold = tonumber(redis.call('GET', KEYS[5]) or '')
local function may_borrow(mark)
  return lend_within > 0 and (mark == 1
    or (mark == 2 and average_hold ~= nil and average_hold <= lend_within))
end

-- Tickets before `offset` were looked at and cannot take a permit now
-- (their agent is at its cap, or the reserve is not theirs): the scan
-- goes on past them, a page at a time, rather than leaving permits idle.
local offset = 0
-- At most this many pages per call: a queue of work that cannot take the
-- free permits must not make every call walk all of it (the next call
-- goes on; Redis runs nothing else meanwhile).
local pages = 16
-- With only reserved permits free: the first ticket seen that may borrow
-- one, lent once the scan found no ticket the reserve is for (`urgent`:
-- one waits at its agent's cap).
local borrower = nil
local urgent = false
while held < capacity do
  local open_to_all = held + reserve < capacity
  local head = {}
  if pages > 0 then
    head = redis.call('ZRANGE', KEYS[1], offset, offset + 63)
  end
  local chosen = nil
  local removed = 0
  local chosen_replica, chosen_agent = nil, nil
  if #head == 0 then
    if not borrower or urgent
      or (per_agent > 0 and (holding[borrower[3]] or 0) >= per_agent) then
      break
    end
    chosen, chosen_replica, chosen_agent = borrower[1], borrower[2], borrower[3]
    borrower = nil
    lent = lent + 1
    offset = 0
  end
  for _, ticket in ipairs(head) do
    local replica, marked, agent = string.match(ticket, '^([^|]*)|%d+|(%d+)|(.*)$')
    local alive = replica and redis.call('ZSCORE', KEYS[4], replica)
    local level = tonumber(marked or 0) % 10
    local capped = per_agent > 0 and (holding[agent] or 0) >= per_agent
    if not alive then
      -- Queued by a replica that is gone (or not a ticket): nobody
      -- would take the permit.
      redis.call('ZREM', KEYS[1], ticket)
      removed = removed + 1
    elseif (open_to_all or level < up_to) and not capped then
      chosen, chosen_replica, chosen_agent = ticket, replica, agent
      break
    elseif level < up_to then
      urgent = true
    elseif not capped and not borrower
      and may_borrow(math.floor(tonumber(marked) / 10)) then
      borrower = { ticket, replica, agent }
    end
  end
  if chosen then
    redis.call('ZREM', KEYS[1], chosen)
    redis.call('ZADD', KEYS[2], now + ttl, chosen)
    held = held + 1
    holding[chosen_agent] = (holding[chosen_agent] or 0) + 1
    granted[#granted + 1] = chosen
    redis.call('PUBLISH', ARGV[10] .. chosen_replica, chosen)
  else
    offset = offset + #head - removed
    pages = pages - 1
  end
end

local hold_ms = tonumber(redis.call('GET', KEYS[5]) or '-1')
local result = { held, capacity, redis.call('ZCARD', KEYS[4]), lent, math.floor(hold_ms) }
-- Ahead of a fresh arrival at each level: what its score would pass.
for level = 0, 9 do
  result[#result + 1] = redis.call('ZCOUNT', KEYS[1], '-inf', score_now(level))
end
for _, ticket in ipairs(granted) do
  result[#result + 1] = ticket
end
return result
