//! The Lua scripts that keep a job's writes atomic: each checks, in
//! Redis, what a runner could only check with a race from outside.

/// Claims abandoned entries from the cursor `ARGV[5]` on, then reads new
/// ones: the next cursor, then `entry id, job id` pairs.
pub(super) const CLAIM: &str = r"
local out = {'0-0'}
local ok, res = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], 'COUNT', ARGV[4])
if ok then
  out[1] = res[1]
  for _, e in ipairs(res[2]) do
    if e[2] then table.insert(out, e[1]); table.insert(out, e[2][2]) end
  end
end
local room = tonumber(ARGV[4]) - (#out - 1) / 2
if room > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      if e[2] then table.insert(out, e[1]); table.insert(out, e[2][2]) end
    end
  end
end
return out
";

/// Starts a claimed job's next attempt, or drops its entry when the job
/// has ended or is gone: `{attempt, state, request, body, cancelled}` or
/// nil. A job cancelled while no runner had it still gets its attempt,
/// so that the runner ends it (as cancelled) and tells its owner.
pub(super) const PREPARE: &str = r"
local st = redis.call('HGET', KEYS[1], 'state')
if (not st) or redis.call('HGET', KEYS[1], 'final') == '1' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[3], ARGV[1])
  return false
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'entry', ARGV[1])
redis.call('DEL', KEYS[2])
local cancelled = redis.call('HGET', KEYS[1], 'cancel') or '0'
return {attempt, st, redis.call('HGET', KEYS[1], 'request'), redis.call('HGET', KEYS[1], 'body'), cancelled}
";

/// A runner's write of the state: only while the attempt is its own and
/// the job has not ended. `ARGV[3]` = `1` ends it (acknowledged,
/// expiring after `ARGV[4]` ms, no longer counted for its agent in
/// `KEYS[4]`).
pub(super) const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'final') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'final', '1')
  local entry = redis.call('HGET', KEYS[1], 'entry')
  if entry then
    redis.call('XACK', KEYS[3], ARGV[5], entry)
    redis.call('XDEL', KEYS[3], entry)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[6])
end
return 1
";

/// A runner's chunks (`ARGV[3..]`): only while the attempt (`ARGV[1]`)
/// is its own; the list lives at most `ARGV[2]` ms.
pub(super) const APPEND: &str = r"
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'final') == '1' then
  return 0
end
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Renews this replica's claim on an entry, if it still owns it: `1`;
/// `2` when the job's owner cancelled it (a message can be missed, the
/// flag cannot); `0` when another replica has it.
pub(super) const RENEW: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p[1] and p[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  if redis.call('HGET', KEYS[2], 'cancel') == '1' then return 2 end
  return 1
end
return 0
";

/// Cancels a job: ended at once when no runner ever started it (`1`,
/// and no longer counted for its agent in `KEYS[2]`), else flagged for
/// its runner (`0`); `-1` when it had ended or is gone.
pub(super) const CANCEL: &str = r"
if not redis.call('HGET', KEYS[1], 'state') or redis.call('HGET', KEYS[1], 'final') == '1' then
  return -1
end
redis.call('HSET', KEYS[1], 'cancel', '1')
local attempt = redis.call('HGET', KEYS[1], 'attempt')
if attempt == '0' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'final', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
return 0
";

/// The scripts, loaded once per connection and again after a restart.
pub(super) struct Scripts {
    pub(super) claim: redis::Script,
    pub(super) prepare: redis::Script,
    pub(super) update: redis::Script,
    pub(super) append: redis::Script,
    pub(super) renew: redis::Script,
    pub(super) cancel: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: redis::Script::new(CLAIM),
            prepare: redis::Script::new(PREPARE),
            update: redis::Script::new(UPDATE),
            append: redis::Script::new(APPEND),
            renew: redis::Script::new(RENEW),
            cancel: redis::Script::new(CANCEL),
        }
    }
}
