//! The handle every caller shares, the events it records and the sweeper
//! that notices expiries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use corral_core::{lock, unix_now_f64, ConfigError, EventSink, NewEvent, RedisState};
use serde_json::json;
use tokio::sync::Notify;

use crate::memory::Memory;
use crate::metrics::{REGISTRY_AGENTS, REGISTRY_CHANGES_TOTAL};
use crate::redis::RedisBackend;
use crate::{Entry, RegistryConfig, RegistryError};

/// What a `put` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Put {
    /// The agent was not listed (or had expired): it is now.
    Joined(Entry),
    /// The agent was listed: its entry is replaced and its TTL renewed.
    Renewed(Entry),
}

impl Put {
    /// The entry as stored.
    pub fn entry(&self) -> &Entry {
        match self {
            Put::Joined(entry) | Put::Renewed(entry) => entry,
        }
    }

    /// Whether the agent joined.
    pub fn joined(&self) -> bool {
        matches!(self, Put::Joined(_))
    }
}

/// The registry: cheap to clone, every clone the same registry.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    config: RegistryConfig,
    backend: Backend,
    events: Arc<dyn EventSink>,
    /// Capabilities the gauge has a series for (at most
    /// [`MAX_CAPABILITY_LABELS`]), set to 0 when their last agent goes.
    labelled: Mutex<BTreeSet<String>>,
    /// Wakes the sweeper after a join or a departure, so the gauge
    /// follows within [`WAKE_DEBOUNCE`].
    wake: Arc<Notify>,
}

enum Backend {
    Memory(Memory),
    // Boxed: its scripts make it four times the memory backend.
    Redis(Box<RedisBackend>),
}

corral_core::impl_debug!(Registry {
    config: shared.config
});

impl Registry {
    /// A registry in this process's memory, its changes recorded in
    /// `events`.
    pub fn memory(config: RegistryConfig, events: Arc<dyn EventSink>) -> Result<Self, ConfigError> {
        config.validate()?;
        let backend = Backend::Memory(Memory::new(config.max_agents));
        Ok(Self::build(config, backend, events))
    }

    /// A registry in the shared Redis of `state`, the same for every
    /// replica using it.
    pub fn redis(
        config: RegistryConfig,
        state: RedisState,
        events: Arc<dyn EventSink>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let backend = Backend::Redis(Box::new(RedisBackend::new(state, config.max_agents)));
        Ok(Self::build(config, backend, events))
    }

    /// In Redis when `state` is given, else in memory.
    pub fn new(
        config: RegistryConfig,
        state: Option<RedisState>,
        events: Arc<dyn EventSink>,
    ) -> Result<Self, ConfigError> {
        match state {
            Some(state) => Self::redis(config, state, events),
            None => Self::memory(config, events),
        }
    }

    /// The same as [`Registry::new`] with [`RegistryConfig::default`],
    /// which is always valid.
    pub fn with_defaults(state: Option<RedisState>, events: Arc<dyn EventSink>) -> Self {
        let config = RegistryConfig::default();
        let backend = match state {
            Some(state) => Backend::Redis(Box::new(RedisBackend::new(state, config.max_agents))),
            None => Backend::Memory(Memory::new(config.max_agents)),
        };
        Self::build(config, backend, events)
    }

    fn build(config: RegistryConfig, backend: Backend, events: Arc<dyn EventSink>) -> Self {
        crate::metrics::describe();
        Self {
            shared: Arc::new(Shared {
                config,
                backend,
                events,
                labelled: Mutex::new(BTreeSet::new()),
                wake: Arc::new(Notify::new()),
            }),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.shared.config
    }

    /// Lists `entry` (its times set here) until its TTL passes without a
    /// heartbeat: a join, recorded as `registry_joined`, or a renewal of
    /// the agent's entry, replaced whole. An endpoint at a private
    /// address written out is refused unless `allow_private_endpoints`.
    pub async fn put(&self, entry: Entry) -> Result<Put, RegistryError> {
        entry.validate(self.shared.config.max_ttl)?;
        if !self.shared.config.allow_private_endpoints {
            crate::entry::check_public_endpoint(&entry.endpoint)?;
        }
        let put = match &self.shared.backend {
            Backend::Memory(memory) => memory.put(entry, unix_now_f64())?,
            Backend::Redis(redis) => {
                let (put, ended) = redis.put(entry).await?;
                // The rejoin took the expired registration out: told
                // here, before the join, as no sweep will see it.
                if let Some(ended) = &ended {
                    self.expired(ended);
                }
                put
            }
        };
        if let Put::Joined(entry) = &put {
            self.joined(entry);
        }
        Ok(put)
    }

    /// Renews `agent`'s entry by its TTL; `None` when it is not listed
    /// (never was, left or expired): the agent should `put` again.
    pub async fn heartbeat(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        match &self.shared.backend {
            Backend::Memory(memory) => Ok(memory.heartbeat(agent, unix_now_f64())),
            Backend::Redis(redis) => redis.heartbeat(agent).await,
        }
    }

    /// Takes `agent` off the registry, recorded as `registry_left`; the
    /// entry it had, if live.
    pub async fn remove(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        let removed = match &self.shared.backend {
            Backend::Memory(memory) => memory.remove(agent),
            Backend::Redis(redis) => redis.remove(agent).await?,
        };
        if let Some(entry) = &removed {
            self.changed("registry_left", entry, json!({}));
        }
        Ok(removed)
    }

    /// `agent`'s entry, while live.
    pub async fn get(&self, agent: &str) -> Result<Option<Entry>, RegistryError> {
        match &self.shared.backend {
            Backend::Memory(memory) => Ok(memory.get(agent)),
            Backend::Redis(redis) => redis.get(agent).await,
        }
    }

    /// The live entries listing `capability` (all of them for `None`),
    /// by agent; an error when Redis does not answer.
    pub async fn try_find(&self, capability: Option<&str>) -> Result<Vec<Entry>, RegistryError> {
        match &self.shared.backend {
            Backend::Memory(memory) => Ok(memory.find(capability)),
            Backend::Redis(redis) => {
                let mut all = redis.list().await?;
                all.retain(|entry| capability.is_none_or(|c| entry.can(c)));
                Ok(all)
            }
        }
    }

    /// The live entries listing `capability` (all of them for `None`),
    /// by agent; none, logged, when Redis does not answer.
    pub async fn find(&self, capability: Option<&str>) -> Vec<Entry> {
        self.try_find(capability).await.unwrap_or_else(|error| {
            tracing::debug!(%error, "registry lookup failed");
            Vec::new()
        })
    }

    /// Records the entries that expired since the last sweep as
    /// `registry_expired` and sets the gauge from the live ones; the
    /// expired entries. The sweeper calls it every `sweep_interval`.
    pub async fn sweep(&self) -> Vec<Entry> {
        let (expired, live) = match &self.shared.backend {
            Backend::Memory(memory) => {
                let (expired, live) = memory.sweep();
                (expired, Some(live))
            }
            Backend::Redis(redis) => match redis.sweep().await {
                Ok(swept) => swept,
                Err(error) => {
                    // Nothing is known gone while Redis is away.
                    tracing::debug!(%error, "registry sweep skipped");
                    return Vec::new();
                }
            },
        };
        for entry in &expired {
            self.expired(entry);
        }
        // None: nothing changed since this replica last counted.
        if let Some(live) = live {
            self.count(&live);
        }
        expired
    }

    /// Starts the sweeper: every `sweep_interval`, and 100ms (at most
    /// `sweep_interval`) after a join or departure, a
    /// [`sweep`](Registry::sweep), one for a burst of them. It ends when the last
    /// handle on the registry is dropped. Needs a tokio runtime.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let every = self.shared.config.sweep_interval;
        let wake = self.shared.wake.clone();
        tokio::spawn(sweep_while_held(Arc::downgrade(&self.shared), wake, every))
    }

    fn expired(&self, entry: &Entry) {
        let data = json!({ "expires_at": entry.expires_at });
        self.changed("registry_expired", entry, data);
    }

    fn joined(&self, entry: &Entry) {
        let data = json!({
            "models": entry.models,
            "endpoint": entry.endpoint,
            "ttl_secs": entry.ttl.as_secs_f64(),
        });
        self.changed("registry_joined", entry, data);
    }

    /// Records `kind` about `entry` with `data` (and what every registry
    /// event carries), counts it, and wakes the sweeper for the gauge.
    fn changed(&self, kind: &'static str, entry: &Entry, mut data: serde_json::Value) {
        if let Some(fields) = data.as_object_mut() {
            fields.insert("capabilities".into(), json!(entry.capabilities));
            fields.insert("registered_at".into(), json!(entry.registered_at));
        }
        let mut event = NewEvent::new(kind, data);
        event.agent = Some(entry.agent.clone());
        self.shared.events.record(event);
        let change = kind.trim_start_matches("registry_");
        metrics::counter!(REGISTRY_CHANGES_TOTAL, "change" => change).increment(1);
        if kind != "registry_expired" {
            self.shared.wake.notify_one();
        }
    }

    /// Sets the gauge: every label given so far (0 when none lists it
    /// now: the metrics facade cannot drop a series), and `other` once
    /// the labels are all given.
    fn count(&self, live: &[Entry]) {
        let mut labelled = lock(&self.shared.labelled);
        let counts = by_label(live, &mut labelled, MAX_CAPABILITY_LABELS);
        let full = labelled.len() >= MAX_CAPABILITY_LABELS;
        let labels = labelled.iter().map(String::as_str);
        for label in labels.chain(full.then_some(OTHER_CAPABILITIES)) {
            let n = counts.get(label).copied().unwrap_or(0);
            metrics::gauge!(REGISTRY_AGENTS, "capability" => label.to_string()).set(n as f64);
        }
    }
}

/// How many capabilities get a label of their own in
/// `corral_registry_agents`: agents choose capability names, and each
/// label is a series kept for the life of the process.
pub const MAX_CAPABILITY_LABELS: usize = 64;

/// The label agents are counted under for capabilities beyond
/// [`MAX_CAPABILITY_LABELS`].
pub const OTHER_CAPABILITIES: &str = "other";

/// How many of `live` list each label: a capability is its own label if
/// it has one, or gets one while fewer than `max` are given (the most
/// listed first, so the busy ones are seen), else counts as `other`,
/// each agent once per label.
pub(crate) fn by_label(
    live: &[Entry],
    labelled: &mut BTreeSet<String>,
    max: usize,
) -> BTreeMap<String, usize> {
    let counts = by_capability(live);
    let mut newcomers: Vec<(&String, usize)> = counts
        .iter()
        .filter(|(capability, _)| !labelled.contains(*capability))
        .map(|(capability, n)| (capability, *n))
        .collect();
    newcomers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let room = max.saturating_sub(labelled.len());
    labelled.extend(newcomers.into_iter().take(room).map(|(c, _)| c.clone()));
    let mut by_label = BTreeMap::new();
    for entry in live {
        let labels: BTreeSet<&str> = entry
            .capabilities
            .iter()
            .map(|c| {
                if labelled.contains(c) {
                    c.as_str()
                } else {
                    OTHER_CAPABILITIES
                }
            })
            .collect();
        for label in labels {
            *by_label.entry(label.to_string()).or_insert(0) += 1;
        }
    }
    by_label
}

/// How many of `live` list each capability.
pub(crate) fn by_capability(live: &[Entry]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in live {
        let unique: BTreeSet<&String> = entry.capabilities.iter().collect();
        for capability in unique {
            *counts.entry(capability.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// How long the sweeper waits after a join or departure wakes it, so the
/// ones that follow share its sweep; never above `sweep_interval`.
const WAKE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Holds the registry only while sweeping, so dropping the last handle
/// ends the task.
async fn sweep_while_held(shared: Weak<Shared>, wake: Arc<Notify>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let debounce = every.min(WAKE_DEBOUNCE);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = wake.notified() => {
                // A burst of joins (a fleet starting) makes one sweep, not
                // one each: each reads every entry. The tick restarts, as
                // this sweep does its work.
                tokio::time::sleep(debounce).await;
                ticks.reset();
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        Registry { shared }.sweep().await;
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
