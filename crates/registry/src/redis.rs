//! The registry in the shared Redis, so every replica sees the same
//! agents.
//!
//! Three keys per deployment and one per agent:
//!
//! - `registry:agent:{agent}`, `{registered_at}|{ttl_ms}` with Redis's
//!   own TTL (`SET ... PX`): the entry is live exactly while it exists;
//! - `registry:entries`, a hash of each agent's entry as stored,
//!   `{registered_at}|{ttl_ms}|{entry JSON}`, kept past the expiry until
//!   the expiry is told, so it can be;
//! - `registry:deadlines`, a sorted set of agents by deadline (Unix
//!   milliseconds), so a sweep finds the expired with one range query
//!   instead of reading every entry, and a full check counts with
//!   `ZCARD`;
//! - `registry:version`, bumped by each join, replacement, departure and
//!   told expiry, so a sweep re-reads the entries (for the gauge) only
//!   when one of those happened, on any replica.
//!
//! An expiry is told by the script that takes it out of the hash and
//! the set, atomically: by a sweep, or by the `put` that rejoins the
//! agent first. Either way once, whichever replica runs it. A `DELETE`
//! takes a live entry out, so a departure is not also an expiry.

use std::sync::Mutex;
use std::time::Duration;

use corral_core::{lock, unix_now_f64, RedisState, StateUnavailable};

use crate::{Entry, Put, RegistryError};

/// Joins or renews. A previous registration whose key expired is
/// returned to be told as expired; a new agent beyond the limit (not
/// counting the expired) is refused (`{-1}`).
const PUT: &str = r"
local old = redis.call('GET', KEYS[1])
local since = ARGV[4]
local joined = 1
local ended, ended_at = '', ''
if old then
  since = string.match(old, '^([^|]*)|')
  joined = 0
else
  local prev = redis.call('HGET', KEYS[3], ARGV[1])
  if prev then
    ended, ended_at = prev, tostring(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '')
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
  local n = redis.call('ZCARD', KEYS[2])
  if n >= tonumber(ARGV[5]) then
    for _, agent in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[7])) do
      if redis.call('EXISTS', ARGV[6] .. agent) == 0 then n = n - 1 end
    end
    if n >= tonumber(ARGV[5]) then
      if ended_at ~= '' then redis.call('ZADD', KEYS[2], ended_at, ARGV[1]) end
      return {-1, '', '', ''}
    end
  end
end
redis.call('SET', KEYS[1], since .. '|' .. ARGV[3], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], since .. '|' .. ARGV[3] .. '|' .. ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[7]) + tonumber(ARGV[3]), ARGV[1])
redis.call('INCR', KEYS[4])
return {joined, since, ended, ended_at}
";

/// Renews a live entry by its own TTL; nothing for an unknown one.
const HEARTBEAT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ttl = string.match(v, '^[^|]*|([^|]*)')
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ttl), ARGV[1])
return redis.call('HGET', KEYS[3], ARGV[1])
";

/// Takes a live entry out; an expired one is left for the sweep to
/// tell.
const REMOVE: &str = r"
if redis.call('DEL', KEYS[1]) == 0 then return false end
local v = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[4])
return v
";

/// One live entry and its remaining milliseconds.
const GET: &str = r"
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then return false end
local v = redis.call('HGET', KEYS[3], ARGV[1])
if not v then return false end
return {v, tostring(pttl)}
";

/// Every live entry with its remaining milliseconds, flat.
const LIST: &str = r"
local out = {}
for _, agent in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local pttl = redis.call('PTTL', ARGV[1] .. agent)
  local v = pttl >= 0 and redis.call('HGET', KEYS[2], agent)
  if v then
    table.insert(out, v)
    table.insert(out, tostring(pttl))
  end
end
return out
";

/// The version, then each entry past its deadline whose key is gone
/// (taken out here, so told once) and its deadline, flat.
const SWEEP: &str = r"
local out = {''}
for _, agent in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  if redis.call('EXISTS', ARGV[2] .. agent) == 0 then
    local v = redis.call('HGET', KEYS[2], agent)
    local at = redis.call('ZSCORE', KEYS[1], agent)
    redis.call('HDEL', KEYS[2], agent)
    redis.call('ZREM', KEYS[1], agent)
    if v then
      table.insert(out, v)
      table.insert(out, tostring(at))
    end
  end
end
if #out > 1 then redis.call('INCR', KEYS[3]) end
out[1] = redis.call('GET', KEYS[3]) or '0'
return out
";

pub(crate) struct RedisBackend {
    state: RedisState,
    max_agents: usize,
    scripts: Scripts,
    /// `registry:version` when this replica last read every entry:
    /// unchanged, the gauge it set still holds.
    counted: Mutex<Option<String>>,
}

struct Scripts {
    put: redis::Script,
    heartbeat: redis::Script,
    remove: redis::Script,
    get: redis::Script,
    list: redis::Script,
    sweep: redis::Script,
}

impl RedisBackend {
    pub(crate) fn new(state: RedisState, max_agents: usize) -> Self {
        Self {
            state,
            max_agents,
            scripts: Scripts {
                put: redis::Script::new(PUT),
                heartbeat: redis::Script::new(HEARTBEAT),
                remove: redis::Script::new(REMOVE),
                get: redis::Script::new(GET),
                list: redis::Script::new(LIST),
                sweep: redis::Script::new(SWEEP),
            },
            counted: Mutex::new(None),
        }
    }

    fn key(&self, name: &str) -> String {
        self.state.key(&format!("registry:{name}"))
    }

    /// The agent's key, the deadlines, the entries and the version.
    fn keys(&self, agent: &str) -> Vec<String> {
        vec![
            self.key(&format!("agent:{agent}")),
            self.key("deadlines"),
            self.key("entries"),
            self.key("version"),
        ]
    }

    /// Joins or renews; on a join, the agent's previous registration if
    /// it expired untold (the put takes it out, so the caller tells it).
    pub(crate) async fn put(
        &self,
        mut entry: Entry,
    ) -> Result<(Put, Option<Entry>), RegistryError> {
        let now = unix_now_f64();
        let json = serde_json::to_string(&entry).map_err(|e| invalid(&e))?;
        let args = [
            entry.agent.clone(),
            json,
            ttl_ms(entry.ttl).to_string(),
            now.to_string(),
            self.max_agents.to_string(),
            self.key("agent:"),
            unix_ms(now).to_string(),
        ];
        let (joined, since, ended, ended_at): (i64, String, String, String) = self
            .state
            .script(&self.scripts.put, &self.keys(&entry.agent), &args)
            .await?;
        if joined < 0 {
            return Err(RegistryError::Full {
                max_agents: self.max_agents,
            });
        }
        let ended = ended_entry(&ended, &ended_at);
        entry.registered_at = since.parse().unwrap_or(now);
        entry.expires_at = now + entry.ttl.as_secs_f64();
        let put = if joined == 1 {
            Put::Joined(entry)
        } else {
            Put::Renewed(entry)
        };
        Ok((put, ended))
    }

    pub(crate) async fn heartbeat(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let args = [agent.to_string(), unix_ms(unix_now_f64()).to_string()];
        let stored: Option<String> = self
            .state
            .script(&self.scripts.heartbeat, &self.keys(agent), &args)
            .await?;
        Ok(stored.and_then(|v| decode(&v, None)))
    }

    pub(crate) async fn remove(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let stored: Option<String> = self
            .state
            .script(
                &self.scripts.remove,
                &self.keys(agent),
                &[agent.to_string()],
            )
            .await?;
        Ok(stored.and_then(|v| decode(&v, None)))
    }

    pub(crate) async fn get(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let found: Option<(String, String)> = self
            .state
            .script(&self.scripts.get, &self.keys(agent), &[agent.to_string()])
            .await?;
        Ok(found.and_then(|(v, pttl)| decode(&v, pttl.parse().ok())))
    }

    /// Every live entry, by agent.
    pub(crate) async fn list(&self) -> Result<Vec<Entry>, StateUnavailable> {
        let keys = [self.key("deadlines"), self.key("entries")];
        let args = [self.key("agent:")];
        let flat: Vec<String> = self.state.script(&self.scripts.list, &keys, &args).await?;
        let mut found: Vec<Entry> = flat
            .chunks_exact(2)
            .filter_map(|pair| decode(&pair[0], pair[1].parse().ok()))
            .collect();
        found.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(found)
    }

    /// The entries that expired untold (each told by one replica only),
    /// and the live ones when anything changed since this replica last
    /// read them (`None`: the gauge still holds).
    pub(crate) async fn sweep(&self) -> Result<(Vec<Entry>, Option<Vec<Entry>>), StateUnavailable> {
        let keys = [
            self.key("deadlines"),
            self.key("entries"),
            self.key("version"),
        ];
        let args = [unix_ms(unix_now_f64()).to_string(), self.key("agent:")];
        let flat: Vec<String> = self.state.script(&self.scripts.sweep, &keys, &args).await?;
        let Some((version, ended)) = flat.split_first() else {
            return Ok((Vec::new(), None));
        };
        let mut expired: Vec<Entry> = ended
            .chunks_exact(2)
            .filter_map(|pair| ended_entry(&pair[0], &pair[1]))
            .collect();
        expired.sort_by(|a, b| a.agent.cmp(&b.agent));
        if lock(&self.counted).as_ref() == Some(version) {
            return Ok((expired, None));
        }
        // The expired are taken out already: told even if this fails,
        // and the version stays unrecorded, so the next sweep re-reads.
        let live = self.list().await.ok();
        if live.is_some() {
            *lock(&self.counted) = Some(version.clone());
        }
        Ok((expired, live))
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    // A TTL under a millisecond would be `PX 0`, which Redis refuses.
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Unix seconds as whole milliseconds: the deadlines' scores.
fn unix_ms(unix: f64) -> u64 {
    (unix * 1000.0) as u64
}

fn invalid(e: &serde_json::Error) -> RegistryError {
    RegistryError::Invalid(format!("cannot encode the entry: {e}"))
}

/// An expired entry as stored, its deadline in Unix milliseconds as its
/// `expires_at`; `None` for none (`""`).
fn ended_entry(stored: &str, deadline_ms: &str) -> Option<Entry> {
    let mut entry = decode(stored, None)?;
    if let Ok(ms) = deadline_ms.parse::<f64>() {
        entry.expires_at = ms / 1000.0;
    }
    Some(entry)
}

/// An entry as stored: `{registered_at}|{ttl_ms}|{json}`. Its expiry is
/// `remaining` milliseconds from now, or a whole TTL when just renewed.
fn decode(stored: &str, remaining: Option<i64>) -> Option<Entry> {
    let mut parts = stored.splitn(3, '|');
    let since: f64 = parts.next()?.parse().ok()?;
    let ttl_ms: i64 = parts.next()?.parse().ok()?;
    let mut entry: Entry = serde_json::from_str(parts.next()?).ok()?;
    let remaining = remaining.filter(|ms| *ms >= 0).unwrap_or(ttl_ms);
    entry.registered_at = since;
    entry.expires_at = unix_now_f64() + remaining as f64 / 1000.0;
    Some(entry)
}
