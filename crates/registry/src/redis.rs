//! The registry in the shared Redis, so every replica sees the same
//! agents.
//!
//! One key per agent, `registry:agent:{agent}`, holds
//! `{registered_at}|{ttl_ms}|{entry JSON}` with Redis's own TTL (`SET ...
//! PX`): an entry is live exactly while its key exists. A set,
//! `registry:agents`, lists the agents to read; a member whose key
//! expired is dropped from it by the next read, inside the same script,
//! so a listing never shows an expired entry. An expiry is told by the
//! one replica that claims `registry:ended:{agent}:{registered_at}`
//! (`SET NX`); a `DELETE` claims it too, so a departure is not also an
//! expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use corral_core::{lock, unix_now_f64, RedisState, StateUnavailable};

use crate::{Entry, Put, RegistryError};

/// How long an ended entry's claim is kept: longer than any replica can
/// go between two sweeps that see it, so the expiry is told once.
const CLAIM_TTL: Duration = Duration::from_secs(60 * 60);

/// Joins or renews; a new agent beyond the limit is refused (`{-1}`),
/// after dropping index members whose key expired.
const PUT: &str = r"
local old = redis.call('GET', KEYS[1])
local since = ARGV[4]
local joined = 1
if old then
  since = string.match(old, '^([^|]*)|')
  joined = 0
elseif redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  for _, agent in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', ARGV[6] .. agent) == 0 then
      redis.call('SREM', KEYS[2], agent)
    end
  end
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return {-1, ''}
  end
end
redis.call('SET', KEYS[1], since .. '|' .. ARGV[3] .. '|' .. ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return {joined, since}
";

/// Renews a live entry by its own TTL; nothing for an unknown one.
const HEARTBEAT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
redis.call('PEXPIRE', KEYS[1], string.match(v, '^[^|]*|([^|]*)|'))
redis.call('SADD', KEYS[2], ARGV[1])
return v
";

/// Removes an entry and claims its end, so no replica calls it expired.
const REMOVE: &str = r"
local v = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if v then
  redis.call('SET', ARGV[2] .. string.match(v, '^([^|]*)|'), '1', 'PX', ARGV[3])
end
return v
";

/// One entry and its remaining milliseconds.
const GET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, tostring(redis.call('PTTL', KEYS[1]))}
";

/// Every live entry with its remaining milliseconds, flat; members whose
/// key expired leave the index.
const LIST: &str = r"
local out = {}
for _, agent in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. agent)
  if v then
    table.insert(out, v)
    table.insert(out, tostring(redis.call('PTTL', ARGV[1] .. agent)))
  else
    redis.call('SREM', KEYS[1], agent)
  end
end
return out
";

pub(crate) struct RedisBackend {
    state: RedisState,
    max_agents: usize,
    scripts: Scripts,
    /// What this replica's last sweep saw live, by agent: what is gone
    /// at the next one expired (unless it left). `None` before the
    /// first sweep, which only takes stock.
    seen: Mutex<Option<HashMap<String, Entry>>>,
}

struct Scripts {
    put: redis::Script,
    heartbeat: redis::Script,
    remove: redis::Script,
    get: redis::Script,
    list: redis::Script,
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
            },
            seen: Mutex::new(None),
        }
    }

    fn agent_key(&self, agent: &str) -> String {
        self.state.key(&format!("registry:agent:{agent}"))
    }

    fn keys(&self, agent: &str) -> Vec<String> {
        vec![self.agent_key(agent), self.state.key("registry:agents")]
    }

    fn claim_prefix(&self, agent: &str) -> String {
        self.state.key(&format!("registry:ended:{agent}:"))
    }

    pub(crate) async fn put(&self, mut entry: Entry) -> Result<Put, RegistryError> {
        let now = unix_now_f64();
        let json = serde_json::to_string(&entry).map_err(|e| invalid(&e))?;
        let args = [
            entry.agent.clone(),
            json,
            ttl_ms(entry.ttl).to_string(),
            now.to_string(),
            self.max_agents.to_string(),
            self.state.key("registry:agent:"),
        ];
        let (joined, since): (i64, String) = self
            .state
            .script(&self.scripts.put, &self.keys(&entry.agent), &args)
            .await?;
        if joined < 0 {
            return Err(RegistryError::Full {
                max_agents: self.max_agents,
            });
        }
        entry.registered_at = since.parse().unwrap_or(now);
        entry.expires_at = now + entry.ttl.as_secs_f64();
        if joined == 1 {
            // Seen at once, so an expiry before the next sweep is told.
            if let Some(seen) = lock(&self.seen).as_mut() {
                seen.insert(entry.agent.clone(), entry.clone());
            }
            Ok(Put::Joined(entry))
        } else {
            Ok(Put::Renewed(entry))
        }
    }

    pub(crate) async fn heartbeat(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let args = [agent.to_string()];
        let stored: Option<String> = self
            .state
            .script(&self.scripts.heartbeat, &self.keys(agent), &args)
            .await?;
        Ok(stored.and_then(|v| decode(&v, None)))
    }

    pub(crate) async fn remove(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let args = [
            agent.to_string(),
            self.claim_prefix(agent),
            ttl_ms(CLAIM_TTL).to_string(),
        ];
        let stored: Option<String> = self
            .state
            .script(&self.scripts.remove, &self.keys(agent), &args)
            .await?;
        if let Some(seen) = lock(&self.seen).as_mut() {
            seen.remove(agent);
        }
        Ok(stored.and_then(|v| decode(&v, None)))
    }

    pub(crate) async fn get(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let found: Option<(String, String)> = self
            .state
            .script(&self.scripts.get, &[self.agent_key(agent)], &[])
            .await?;
        Ok(found.and_then(|(v, pttl)| decode(&v, pttl.parse().ok())))
    }

    /// Every live entry, by agent.
    pub(crate) async fn list(&self) -> Result<Vec<Entry>, StateUnavailable> {
        let index = [self.state.key("registry:agents")];
        let args = [self.state.key("registry:agent:")];
        let flat: Vec<String> = self.state.script(&self.scripts.list, &index, &args).await?;
        let mut found: Vec<Entry> = flat
            .chunks_exact(2)
            .filter_map(|pair| decode(&pair[0], pair[1].parse().ok()))
            .collect();
        found.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(found)
    }

    /// The entries that expired since this replica's last sweep (each
    /// told by one replica only), and the live ones.
    pub(crate) async fn sweep(&self) -> Result<(Vec<Entry>, Vec<Entry>), StateUnavailable> {
        let live = self.list().await?;
        let now: HashMap<String, Entry> = live
            .iter()
            .map(|entry| (entry.agent.clone(), entry.clone()))
            .collect();
        let before = lock(&self.seen).replace(now.clone()).unwrap_or_default();
        let mut expired = Vec::new();
        for (agent, entry) in before {
            let same = now
                .get(&agent)
                .is_some_and(|e| e.registered_at == entry.registered_at);
            if !same && self.claim(&entry).await? {
                expired.push(entry);
            }
        }
        expired.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok((expired, live))
    }

    /// Whether this replica is the one to tell `entry`'s end.
    async fn claim(&self, entry: &Entry) -> Result<bool, StateUnavailable> {
        let key = format!("{}{}", self.claim_prefix(&entry.agent), entry.registered_at);
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(CLAIM_TTL));
        let claimed: Option<String> = self.state.query(&set).await?;
        Ok(claimed.is_some())
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    // A TTL under a millisecond would be `PX 0`, which Redis refuses.
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn invalid(e: &serde_json::Error) -> RegistryError {
    RegistryError::Invalid(format!("cannot encode the entry: {e}"))
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
