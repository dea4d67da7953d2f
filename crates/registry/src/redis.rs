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

use std::collections::{HashMap, HashSet};
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
    /// The registrations this replica saw live (at a sweep, or joining
    /// through it) and has not yet seen end: one gone at a sweep expired
    /// (unless it left, which claimed its end first).
    seen: Mutex<Seen>,
}

/// Registrations by agent and `registered_at` (its bits), so an agent's
/// old registration stays to be told while its new one is live.
type Seen = HashMap<(String, u64), Entry>;

fn seen_key(entry: &Entry) -> (String, u64) {
    (entry.agent.clone(), entry.registered_at.to_bits())
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
            seen: Mutex::new(Seen::new()),
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
            lock(&self.seen).insert(seen_key(&entry), entry.clone());
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
        let removed = stored.and_then(|v| decode(&v, None));
        if let Some(entry) = &removed {
            // Its end is claimed: no sweep would tell it anyway.
            lock(&self.seen).remove(&seen_key(entry));
        }
        Ok(removed)
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
        // Taken before listing: a join while the list runs is not in it,
        // and must not look gone.
        let before = lock(&self.seen).clone();
        let live = self.list().await?;
        let mut expired = Vec::new();
        let mut decided = Vec::new();
        for entry in gone(before, &live) {
            match self.claim(&entry).await {
                Ok(claimed) => {
                    decided.push(seen_key(&entry));
                    if claimed {
                        expired.push(entry);
                    }
                }
                Err(error) => {
                    // The unclaimed stay seen for the next sweep; the
                    // claimed are told now, as no later claim would win.
                    tracing::debug!(%error, "registry expiry claims cut short");
                    break;
                }
            }
        }
        remember(&mut lock(&self.seen), &live, &decided);
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

/// The registrations of `before` that `live` no longer has: expired,
/// left, or replaced by a new registration of the same agent.
fn gone(before: Seen, live: &[Entry]) -> Vec<Entry> {
    let live: HashSet<(String, u64)> = live.iter().map(seen_key).collect();
    before
        .into_iter()
        .filter(|(key, _)| !live.contains(key))
        .map(|(_, entry)| entry)
        .collect()
}

/// Updates `seen` in place after a sweep rather than replacing it, so
/// what a join added meanwhile stays: the `decided` ends leave, the
/// `live` entries come in (fresher copies of those already there).
fn remember(seen: &mut Seen, live: &[Entry], decided: &[(String, u64)]) {
    for key in decided {
        seen.remove(key);
    }
    for entry in live {
        seen.insert(seen_key(entry), entry.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agent: &str, registered_at: f64) -> Entry {
        let mut entry = Entry::new(agent, "http://h:1", Duration::from_secs(1));
        entry.registered_at = registered_at;
        entry
    }

    fn seen(entries: &[Entry]) -> Seen {
        entries.iter().map(|e| (seen_key(e), e.clone())).collect()
    }

    fn keys(seen: &Seen) -> Vec<(String, u64)> {
        let mut keys: Vec<_> = seen.keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn gone_are_the_registrations_no_longer_live_even_when_the_agent_rejoined() {
        let before = seen(&[entry("a", 1.0), entry("b", 1.0), entry("c", 1.0)]);
        let live = [entry("a", 1.0), entry("b", 2.0)];
        let mut gone: Vec<_> = gone(before, &live)
            .iter()
            .map(|e| (e.agent.clone(), e.registered_at))
            .collect();
        gone.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(gone, [("b".to_string(), 1.0), ("c".to_string(), 1.0)]);
    }

    #[test]
    fn a_sweep_keeps_joins_made_while_it_ran_and_the_ends_it_did_not_decide() {
        // Seen at the sweep's start: a (live), b and c (gone); then d
        // joined through this replica while the list ran.
        let mut now = seen(&[entry("a", 1.0), entry("b", 1.0), entry("c", 1.0)]);
        now.insert(seen_key(&entry("d", 5.0)), entry("d", 5.0));
        let live = [entry("a", 1.0), entry("e", 3.0)];
        // b's claim was made; c's failed with Redis away.
        remember(&mut now, &live, &[seen_key(&entry("b", 1.0))]);
        let expected: Vec<_> = ["a", "c", "d", "e"]
            .iter()
            .zip([1.0, 1.0, 5.0, 3.0])
            .map(|(agent, at): (&&str, f64)| (agent.to_string(), f64::to_bits(at)))
            .collect();
        assert_eq!(keys(&now), expected);
    }
}
