-- One upstream's permits and residency across replicas, in one atomic step.
--
-- KEYS[1] leases    sorted set of permits held, `model\treplica|seq`,
--                   scored by lease expiry (ms)
-- KEYS[2] residents hash: model -> last use (ms), the models Corral
--                   placed there and did not evict
-- KEYS[3] switching `model\treplica`: the upstream is drained for model
--                   (expires unless the replica renews it)
-- KEYS[4] capacity  hash: model -> capacity an operator set ('' all)
-- KEYS[5] replicas  sorted set of live replicas, scored by expiry (ms)
-- KEYS[6] epoch     hash: a field per replica, set by its every call:
--                   gone, Redis lost its data (restarted empty, flushed,
--                   failed over) since this replica's last call
--
-- ARGV[1] op: claim | release | renew | peek | switch | capacity
-- ARGV[2] this replica
-- ARGV[3] lease ttl (ms)
-- ARGV[4] idle (ms): a resident unused this long, with no permit held,
--         is taken as unloaded by the server's keep_alive
-- claim:    ARGV[5] lease, ARGV[6] model, ARGV[7] its capacity here,
--           ARGV[8] most models loaded at once (0: no limit), ARGV[9]
--           the idle model the replica chose to evict ('' none)
-- release:  ARGV[5] lease, ARGV[6] model, ARGV[7] channel, ARGV[8]
--           upstream (published there: a permit came back)
-- renew:    ARGV[5] model this replica drains for ('' none), ARGV[6..]
--           `lease\tmodel` of the permits this replica holds: their
--           leases extended; re-added only if Redis lost its data (a
--           lease released meanwhile must not come back)
-- switch:   ARGV[5] model to drain for
-- capacity: ARGV[5] model ('' all), ARGV[6] capacity
--
-- Returns { granted 0/1, live replicas, drained for ('' none),
-- n, n x (model, permits other replicas hold, resident 0/1),
-- m, m x (model, capacity set) }.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local replica = ARGV[2]
local ttl = tonumber(ARGV[3])
local idle = tonumber(ARGV[4])
local granted = 0

redis.call('ZADD', KEYS[5], now + ttl, replica)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
-- A dead replica's permits come back when their leases run out.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)

local function split(member)
  return string.match(member, '^(.-)\t(.-)$')
end

local function drained_for()
  local value = redis.call('GET', KEYS[3])
  if not value then
    return nil, nil
  end
  return split(value)
end

-- Permits held per model: all replicas', and other replicas'.
local function count()
  local all, others = {}, {}
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local model, lease = split(member)
    if model then
      all[model] = (all[model] or 0) + 1
      if string.sub(lease, 1, #replica + 1) ~= replica .. '|' then
        others[model] = (others[model] or 0) + 1
      end
    end
  end
  return all, others
end

local lost = redis.call('HSET', KEYS[6], replica, 1) == 1

if op == 'claim' then
  local lease, model = ARGV[5], ARGV[6]
  local member = model .. '\t' .. lease
  if redis.call('ZSCORE', KEYS[1], member) then
    granted = 1
  else
    local capacity = tonumber(ARGV[7])
    local max_loaded = tonumber(ARGV[8])
    local evict = ARGV[9]
    local all = count()
    local drain = drained_for()
    local open = drain == nil or drain == model
    local fits = (all[model] or 0) < capacity
    local room = true
    if model ~= '*' and redis.call('HEXISTS', KEYS[2], model) == 0 and max_loaded > 0 then
      -- A stale resident (unused past keep_alive, nothing running)
      -- makes room by itself.
      for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
        local used = tonumber(redis.call('HGET', KEYS[2], name))
        if (all[name] or 0) == 0 and used + idle < now then
          redis.call('HDEL', KEYS[2], name)
        end
      end
      if redis.call('HLEN', KEYS[2]) >= max_loaded then
        room = evict ~= '' and redis.call('HEXISTS', KEYS[2], evict) == 1
          and (all[evict] or 0) == 0
        if room and open and fits then
          redis.call('HDEL', KEYS[2], evict)
        end
      end
    end
    if open and fits and room then
      granted = 1
      redis.call('ZADD', KEYS[1], now + ttl, member)
      if model ~= '*' then
        redis.call('HSET', KEYS[2], model, now)
      end
      if drain == model then
        redis.call('DEL', KEYS[3])
      end
    end
  end
elseif op == 'release' then
  local model = ARGV[6]
  if redis.call('ZREM', KEYS[1], model .. '\t' .. ARGV[5]) == 1 then
    if redis.call('HEXISTS', KEYS[2], model) == 1 then
      redis.call('HSET', KEYS[2], model, now)
    end
    redis.call('PUBLISH', ARGV[7], ARGV[8])
  end
elseif op == 'renew' then
  local drain = ARGV[5]
  local model_drained, by = drained_for()
  if drain ~= '' then
    if model_drained == nil or by == replica then
      redis.call('SET', KEYS[3], drain .. '\t' .. replica, 'PX', ttl)
    end
  elseif by == replica then
    redis.call('DEL', KEYS[3])
  end
  for i = 6, #ARGV do
    local lease, model = split(ARGV[i])
    if lease and lost then
      redis.call('ZADD', KEYS[1], now + ttl, model .. '\t' .. lease)
      if model ~= '*' and redis.call('HEXISTS', KEYS[2], model) == 0 then
        redis.call('HSET', KEYS[2], model, now)
      end
    elseif lease then
      redis.call('ZADD', KEYS[1], 'XX', now + ttl, model .. '\t' .. lease)
    end
  end
elseif op == 'switch' then
  redis.call('SET', KEYS[3], ARGV[5] .. '\t' .. replica, 'PX', ttl, 'NX')
elseif op == 'capacity' then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
end

local _, others = count()
local drain = drained_for()
local result = { granted, redis.call('ZCARD', KEYS[5]), drain or '' }
local models = {}
for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
  models[name] = 1
end
for name, _ in pairs(others) do
  models[name] = models[name] or 0
end
local listed = {}
for name, resident in pairs(models) do
  listed[#listed + 1] = name
  listed[#listed + 1] = others[name] or 0
  listed[#listed + 1] = resident
end
result[#result + 1] = #listed / 3
for _, v in ipairs(listed) do
  result[#result + 1] = v
end
local set = redis.call('HGETALL', KEYS[4])
result[#result + 1] = #set / 2
for _, v in ipairs(set) do
  result[#result + 1] = v
end
return result
