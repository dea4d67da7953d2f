//! The fleet shared by replicas through Redis.
//!
//! Each replica keeps placing requests with its own view (its queue, its
//! probes), but a permit on an upstream is a **lease in Redis**, claimed
//! before the request is sent: `fleet.lua` grants it only if the model's
//! permits there, held by every replica together, are under its capacity,
//! the model is loaded there or there is room for it (or the idle model
//! the replica chose to evict is idle everywhere), and the upstream is not
//! drained for another model. Every answer carries the upstream's shared
//! state (permits other replicas hold per model, the models loaded, the
//! drain), which the replica's view takes at once: a refused request
//! waits again ahead of its queue, and is placed by a view that agrees
//! with Redis. A released permit is announced on a channel; the replicas
//! hearing it read the upstream's state and try again.
//!
//! A drain one replica decides is a key in Redis, renewed while its
//! requests wait: the other replicas send no more work for the models it
//! drains. An upstream a replica finds failing is announced too, and the
//! others drain it until their own probe finds it answering.
//!
//! Leases are renewed every third of the TTL, so the permits of a replica
//! that dies come back within one TTL. While Redis does not answer, each
//! replica places alone with its share of each capacity (capacity / live
//! replicas, at least one); its permits are counted again at the first
//! renewal after Redis is back.
//!
//! The queue's order holds within a replica; across replicas a permit
//! that comes back goes to the first replica whose most urgent request
//! claims it (each tries, most urgent first, when it hears of it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{lock, ConfigError, RedisState};

use crate::fleet::{Fleet, LeaseKey};

mod claim;
mod sync;
mod wants;

static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("fleet.lua")));

/// A resident unused this long with nothing running is taken as unloaded
/// by the server (Ollama's default `keep_alive`).
const IDLE: Duration = Duration::from_secs(5 * 60);

/// How often a replica shares what its queue waits for.
const WANTS_EVERY: Duration = Duration::from_millis(250);

/// The channel a permit given back is announced on (the upstream's name).
const FREED: &str = "fleet:freed";
/// The channel an upstream found failing is announced on.
const DOWN: &str = "fleet:down";

/// The fleet's handle on Redis.
pub(crate) struct Shared {
    pub(crate) state: RedisState,
    ttl: Duration,
    /// Per upstream, the keys of `fleet.lua`.
    keys: Vec<Vec<String>>,
    /// The permits this replica holds, per upstream: lease -> model.
    held: Mutex<Vec<HashMap<String, Arc<str>>>>,
    /// Live replicas, as of the last script.
    replicas: AtomicUsize,
    /// Redis answers but refuses the script (out of memory, a cluster
    /// that cannot run it): as if away, until a call succeeds.
    broken: std::sync::atomic::AtomicBool,
    /// The wants this replica wrote (`model\treplica`).
    wanted: Mutex<std::collections::HashSet<String>>,
}

/// What a script call reports about one upstream.
pub(crate) struct Report {
    pub(crate) granted: bool,
    replicas: usize,
    drained_for: Option<Arc<str>>,
    /// Model, permits other replicas hold, loaded there.
    models: Vec<(Arc<str>, usize, bool)>,
    /// Capacities an operator set: model ('' all), capacity.
    capacity: Vec<(Arc<str>, usize)>,
}

impl Fleet {
    /// Shares this fleet with every replica on `state` (same URL and key
    /// prefix): permits per (upstream, model), what is loaded where,
    /// drains and failing upstreams, and capacities set with
    /// [`Fleet::set_capacity`]. Permits are leases of `lease_ttl`,
    /// renewed every third of it. Call once, inside a Tokio runtime: it
    /// spawns the tasks that renew leases and hear other replicas.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use corral_core::RedisState;
    /// use corral_fleet::{Fleet, UpstreamSpec};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
    /// let fleet = Fleet::new(vec![UpstreamSpec::new("a", 2), UpstreamSpec::new("b", 2)]);
    /// fleet.share(state, Duration::from_secs(10)).unwrap();
    /// # }
    /// ```
    pub fn share(
        self: &Arc<Self>,
        state: RedisState,
        lease_ttl: Duration,
    ) -> Result<(), ConfigError> {
        if lease_ttl < Duration::from_millis(300) {
            return Err(ConfigError::new(
                "lease_ttl",
                format!("{lease_ttl:?} is too short to renew: use 300ms or more"),
            ));
        }
        let keys = self
            .specs
            .iter()
            .map(|spec| {
                let key = |k: &str| state.key(&format!("fleet:{}:{k}", spec.name));
                vec![
                    key("leases"),
                    key("residents"),
                    key("switching"),
                    key("capacity"),
                    state.key("fleet:replicas"),
                    key("epoch"),
                ]
            })
            .collect();
        let shared = Arc::new(Shared {
            state,
            ttl: lease_ttl,
            keys,
            held: Mutex::new(vec![HashMap::new(); self.specs.len()]),
            replicas: AtomicUsize::new(1),
            broken: std::sync::atomic::AtomicBool::new(false),
            wanted: Mutex::default(),
        });
        if self.shared.set(shared).is_err() {
            return Err(ConfigError::new("state", "the fleet is already shared"));
        }
        // They hold the fleet weakly: dropped, it stops renewing (as a
        // replica that dies) and they end.
        tokio::spawn(Self::keep_alive(Arc::downgrade(self), lease_ttl));
        tokio::spawn(Self::hear_replicas(Arc::downgrade(self)));
        Ok(())
    }

    /// Whether the fleet is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    /// The share of `capacity` this replica may use alone: all of it
    /// unless the fleet is shared and Redis does not answer.
    pub(crate) fn share_of(&self, capacity: usize) -> usize {
        match self.shared.get() {
            Some(shared) if !shared.is_live() => {
                (capacity / shared.replicas.load(Ordering::Relaxed).max(1)).max(1)
            }
            _ => capacity,
        }
    }

    /// One call of the script on upstream `index`, its report taken
    /// into the view.
    async fn run(&self, index: usize, op: &str, extra: Vec<String>) -> Result<Report, ()> {
        let shared = self.shared.get().ok_or(())?;
        let report = shared.call(index, op, extra).await?;
        self.apply(index, &report);
        Ok(report)
    }

    /// Gives back the lease of `key` in Redis, if this replica holds it,
    /// without waiting; the replicas hear of it and try again.
    pub(crate) fn release_shared(&self, key: &LeaseKey) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let lease = shared.lease(key);
        if lock(&shared.held)[key.upstream].remove(&lease).is_none() {
            return;
        }
        let extra = vec![
            lease,
            key.model.to_string(),
            shared.state.key(FREED),
            self.specs[key.upstream].name.to_string(),
        ];
        shared.spawn(key.upstream, "release", extra);
    }

    /// Tells the other replicas that upstream `index` fails: they drain
    /// it until their own probe finds it answering.
    pub(crate) fn announce_down(&self, index: usize) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let state = shared.state.clone();
        let name = self.specs[index].name.to_string();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = state
                    .publish(DOWN, &format!("{}\t{name}", state.replica()))
                    .await;
            });
        }
    }

    /// Writes a capacity set at run time to Redis, for every replica.
    pub(crate) fn share_capacity(&self, index: usize, model: &str, capacity: usize) {
        if let Some(shared) = self.shared.get() {
            shared.spawn(
                index,
                "capacity",
                vec![model.to_string(), capacity.to_string()],
            );
        }
    }

    /// Tells Redis this replica drains upstream `index` for `model`.
    pub(crate) fn share_switch(&self, index: usize, model: &str) {
        if let Some(shared) = self.shared.get() {
            shared.spawn(index, "switch", vec![model.to_string()]);
        }
    }
}

impl Shared {
    /// Whether Redis answers and runs the script: what other replicas
    /// hold counts only then.
    pub(crate) fn is_live(&self) -> bool {
        self.state.is_up() && !self.broken.load(Ordering::Relaxed)
    }

    /// The name a lease of this replica has in Redis.
    pub(crate) fn lease(&self, key: &LeaseKey) -> String {
        format!("{}|{}", self.state.replica(), key.lease)
    }

    /// One call of the script on upstream `index`.
    async fn call(&self, index: usize, op: &str, extra: Vec<String>) -> Result<Report, ()> {
        let mut args = vec![
            op.to_string(),
            self.state.replica().to_string(),
            self.ttl.as_millis().to_string(),
            IDLE.as_millis().to_string(),
        ];
        args.extend(extra);
        let reply: Vec<redis::Value> = match self
            .state
            .script(&SCRIPT, &self.keys[index], &args)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                if error.refused && !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        %error,
                        "Redis refuses the fleet's script: each replica places alone with its share of the capacities until it runs again"
                    );
                }
                return Err(());
            }
        };
        if self.broken.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis runs the fleet's script again: the servers are shared again");
        }
        let report = parse(reply);
        self.replicas.store(report.replicas, Ordering::Relaxed);
        Ok(report)
    }

    /// A call made without waiting for it (failing, what it would have
    /// written runs out or is written again at the next renewal).
    fn spawn(self: &Arc<Self>, index: usize, op: &'static str, extra: Vec<String>) {
        let shared = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = shared.call(index, op, extra).await;
            });
        }
    }
}

/// The script's answer, read leniently: what is missing counts as none.
fn parse(reply: Vec<redis::Value>) -> Report {
    let mut values = reply.into_iter();
    let mut next = || values.next();
    let number = |v: Option<redis::Value>| match v {
        Some(redis::Value::Int(n)) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    };
    let text = |v: Option<redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8(b).unwrap_or_default(),
        Some(redis::Value::SimpleString(s)) => s,
        _ => String::new(),
    };
    let granted = number(next()) == 1;
    let replicas = number(next()).max(1);
    let drained = text(next());
    let drained_for = (!drained.is_empty()).then(|| Arc::from(drained.as_str()));
    let listed = number(next());
    let models = (0..listed)
        .map(|_| {
            let model: Arc<str> = Arc::from(text(next()).as_str());
            let others = number(next());
            (model, others, number(next()) == 1)
        })
        .collect();
    let set = number(next());
    let capacity = (0..set)
        .map(|_| {
            let model: Arc<str> = Arc::from(text(next()).as_str());
            (model, text(next()).parse().unwrap_or(1))
        })
        .collect();
    Report {
        granted,
        replicas,
        drained_for,
        models,
        capacity,
    }
}
