//! The scheduler: pools of upstream permits, one per model given its own,
//! and which pool a ticket waits in. Waiting and holding are in `permit`.

use crate::map::Map;
use std::collections::HashMap;
#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::sync::RwLock;
#[cfg(feature = "redis")]
use std::time::Duration;

use corral_core::{AgentId, LoadSnapshot, Priority, RequestId, UpstreamLoad};
use tokio::sync::Notify;

use crate::config::PriorityConfig;
use crate::models::Models;
#[cfg(feature = "redis")]
use crate::permit::AcquireKind;
pub use crate::permit::{Acquire, Permit};
use crate::pool::{FleetLink, Pool, Ticket};
use crate::Estimate;

mod admit;
mod requests;

pub use admit::Admitted;

#[cfg(feature = "redis")]
use crate::redis::RedisPool;
use corral_fleet::Fleet;
pub use requests::Waiter;
pub(crate) use requests::{Listed, Waiting};

mod load;
#[cfg(feature = "redis")]
mod redis;

/// Where a request for a model waits.
pub(crate) enum Queue {
    /// In this replica's pool.
    Local(Arc<Pool>),
    /// In Redis, shared by every replica.
    #[cfg(feature = "redis")]
    Shared(Arc<RedisPool>),
    /// In a pool per model not made yet: nothing waits there.
    NotMade,
}

/// Upstream permits, and the order in which waiting requests get them.
///
/// One pool of `capacity` permits for the upstream, and one per model
/// given its own capacity (`model_capacity`, as Ollama's
/// `OLLAMA_NUM_PARALLEL` is per loaded model). The scheduler knows nothing
/// of HTTP: [`Scheduler::acquire`] takes a [`Ticket`] and resolves to a
/// [`Permit`] whoever awaits it, a client's request or a job the proxy
/// runs on its own.
///
/// ```
/// use corral_core::{Priority, UpstreamLoad};
/// use corral_priority::{PriorityConfig, Scheduler, Ticket};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let scheduler = Scheduler::new(&PriorityConfig { capacity: 1, ..PriorityConfig::default() }).unwrap();
/// let ticket = |agent: &str, priority| Ticket {
///     agent: agent.into(),
///     priority: Priority::new(priority).unwrap(),
///     weight: 1.0,
///     cost: 100.0,
///     bytes: 0,
///     deadline: None,
/// };
/// let running = scheduler.acquire(ticket("a", 5), None).await.unwrap();
/// let batch = scheduler.acquire(ticket("b", 9), None);
/// let urgent = scheduler.acquire(ticket("c", 1), None);
/// assert_eq!(scheduler.snapshot().queued_total(), 2);
/// drop(running); // the permit goes to priority 1 first
/// let urgent = urgent.await.unwrap();
/// assert_eq!(scheduler.snapshot().queued_total(), 1);
/// # drop((urgent, batch));
/// # }
/// ```
pub struct Scheduler {
    config: PriorityConfig,
    default: Arc<Pool>,
    by_model: Map<String, Arc<Pool>>,
    /// With `per_model`: the pools made on first use.
    on_demand: Option<Models>,
    changes: Arc<Notify>,
    /// With several upstreams: the fleet whose permits the pools hand out.
    fleet: Option<Arc<Fleet>>,
    /// The requests waiting, by request id.
    waiting: Arc<Waiting>,
    /// With shared state, each pool's Redis side, by pool name.
    #[cfg(feature = "redis")]
    shared: RwLock<HashMap<String, Arc<RedisPool>>>,
    /// With shared state, what a pool made on demand is shared through.
    #[cfg(feature = "redis")]
    backend: Option<(corral_core::RedisState, Duration)>,
    /// Replicas assumed until Redis counts them, for pools made later.
    #[cfg(feature = "redis")]
    replicas: AtomicUsize,
}

#[cfg(feature = "redis")]
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Every write completes before anything can panic: the data stays
    // consistent.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "redis")]
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("load", &self.snapshot())
            .field("models", &self.by_model.keys().collect::<Vec<_>>())
            .field("per_model", &self.on_demand.is_some())
            .finish()
    }
}

/// Ollama names `llama3` and `llama3:latest` the same model.
pub(crate) use corral_core::canonical_model;

impl Scheduler {
    /// A scheduler for `config`, or the key and reason it is refused for.
    pub fn new(config: &PriorityConfig) -> Result<Arc<Self>, corral_core::ConfigError> {
        Self::build(config, None)
    }

    /// A scheduler handing out the permits of `fleet`: one queue per
    /// model, in the order of service, each request granted a permit on
    /// the upstream the fleet chooses for it ([`corral_fleet`]). The
    /// capacities are the fleet's; `config`'s are not used.
    ///
    /// ```
    /// use corral_core::{Priority, UpstreamLoad};
    /// use corral_fleet::{Fleet, UpstreamSpec};
    /// use corral_priority::{PriorityConfig, Scheduler, Ticket};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1), UpstreamSpec::new("b", 1)]);
    /// let scheduler = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    /// let ticket = || Ticket {
    ///     agent: "a".into(),
    ///     priority: Priority::DEFAULT,
    ///     weight: 1.0,
    ///     cost: 1.0,
    ///     bytes: 0,
    ///     deadline: None,
    /// };
    /// let one = scheduler.acquire(ticket(), Some("llama3")).await.unwrap();
    /// let two = scheduler.acquire(ticket(), Some("llama3")).await.unwrap();
    /// assert_ne!(one.upstream(), two.upstream(), "one on each server");
    /// # }
    /// ```
    pub fn with_fleet(
        config: &PriorityConfig,
        fleet: Arc<Fleet>,
    ) -> Result<Arc<Self>, corral_core::ConfigError> {
        Self::build(config, Some(fleet))
    }

    fn build(
        config: &PriorityConfig,
        fleet: Option<Arc<Fleet>>,
    ) -> Result<Arc<Self>, corral_core::ConfigError> {
        config.validate()?;
        crate::metrics::describe();
        let cap = config.max_in_flight_per_agent;
        let changes = Arc::new(Notify::new());
        let pool = |name: String, capacity| {
            Pool::new(
                name,
                capacity,
                config.aging,
                cap,
                config.reserve,
                changes.clone(),
                None,
            )
        };
        let (default, by_model) = match &fleet {
            Some(fleet) => (
                Self::fleet_pool(config, &changes, fleet, corral_fleet::ANY_MODEL),
                Map::default(),
            ),
            None => {
                let by_model = config
                    .model_capacity
                    .iter()
                    .map(|(model, capacity)| {
                        let key = canonical_model(model);
                        (key.clone(), pool(key, *capacity))
                    })
                    .collect();
                (pool("*".into(), config.capacity), by_model)
            }
        };
        let per_model = config.per_model || fleet.is_some();
        Ok(Arc::new(Self {
            config: config.clone(),
            default,
            by_model,
            on_demand: per_model.then(|| Models::new(config.capacity)),
            changes,
            fleet,
            waiting: Arc::default(),
            #[cfg(feature = "redis")]
            shared: RwLock::new(HashMap::new()),
            #[cfg(feature = "redis")]
            backend: None,
            #[cfg(feature = "redis")]
            replicas: AtomicUsize::new(1),
        }))
    }

    /// A pool for `model` whose permits are `fleet`'s; it joins the fleet
    /// to hear when permits come back.
    fn fleet_pool(
        config: &PriorityConfig,
        changes: &Arc<Notify>,
        fleet: &Arc<Fleet>,
        model: &str,
    ) -> Arc<Pool> {
        let pool = Pool::new(
            model.to_string(),
            0,
            config.aging,
            config.max_in_flight_per_agent,
            config.reserve,
            changes.clone(),
            Some(FleetLink {
                fleet: fleet.clone(),
                model: Arc::from(model),
            }),
        );
        let waiting: Arc<dyn corral_fleet::Waiting> = pool.clone();
        fleet.join(model, Arc::downgrade(&waiting));
        pool
    }

    /// With a fleet: why a request for `model` cannot be queued at all
    /// ([`ModelNotServed`](crate::ModelNotServed): no upstream serves it;
    /// [`TooManyModels`](crate::TooManyModels): no queue for it), else
    /// `None`. Without a fleet every request can wait.
    pub fn refusal(&self, model: Option<&str>) -> Option<corral_core::BoxError> {
        let fleet = self.fleet.as_ref()?;
        let model = model.filter(|m| !m.is_empty())?;
        let name = canonical_model(model);
        if !fleet.serves_anywhere(&name) {
            return Some(Box::new(crate::ModelNotServed { model: name }));
        }
        // A model with no queue of its own would wait with those naming
        // none, where the fleet cannot tell what it needs.
        if Arc::ptr_eq(&self.pool(Some(model)), &self.default) {
            return Some(Box::new(crate::TooManyModels { model: name }));
        }
        None
    }

    /// The fleet whose permits this scheduler hands out, if any.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// A pool of its own for `name` (canonical), made on first use.
    fn on_demand_pool(&self, models: &Models, name: &str) -> Option<Arc<Pool>> {
        if let Some(fleet) = &self.fleet {
            return models.get_or_make(name, true, |_| {
                Self::fleet_pool(&self.config, &self.changes, fleet, name)
            });
        }
        #[cfg(feature = "redis")]
        let shared = self.backend.is_some();
        #[cfg(not(feature = "redis"))]
        let shared = false;
        // Redis pools are not evicted: their leases and queue live in
        // Redis, their tasks with them.
        models.get_or_make(name, !shared, |capacity| {
            let pool = Pool::new(
                name.to_string(),
                capacity,
                self.config.aging,
                self.config.max_in_flight_per_agent,
                self.config.reserve,
                self.changes.clone(),
                None,
            );
            #[cfg(feature = "redis")]
            if let Some((state, ttl)) = &self.backend {
                let shared = RedisPool::new(
                    state.clone(),
                    pool.clone(),
                    capacity,
                    self.config.aging,
                    *ttl,
                    self.config.reserve,
                    self.config.max_in_flight_per_agent,
                );
                shared.assume_replicas(self.replicas.load(Ordering::Relaxed));
                tokio::spawn(shared.clone().keep_alive());
                tokio::spawn(shared.clone().hear_grants());
                write(&self.shared).insert(name.to_string(), shared);
            }
            pool
        })
    }

    /// With shared state: how many replicas to assume share the upstream
    /// until Redis has counted them. A replica that starts while Redis is
    /// away schedules alone with capacity / `replicas` (at least one) per
    /// pool, rather than the whole capacity. No effect without Redis.
    ///
    /// ```
    /// use corral_priority::{PriorityConfig, Scheduler};
    ///
    /// let scheduler = Scheduler::new(&PriorityConfig::default()).unwrap();
    /// scheduler.assume_replicas(3); // in one process: nothing to share
    /// ```
    pub fn assume_replicas(&self, replicas: usize) {
        #[cfg(feature = "redis")]
        self.replicas.store(replicas, Ordering::Relaxed);
        #[cfg(feature = "redis")]
        for pool in read(&self.shared).values() {
            pool.assume_replicas(replicas);
        }
        #[cfg(not(feature = "redis"))]
        let _ = replicas;
    }

    #[cfg(feature = "redis")]
    fn shared_of(&self, pool: &Pool) -> Option<Arc<RedisPool>> {
        self.backend.as_ref()?;
        read(&self.shared).get(pool.name()).cloned()
    }

    fn snapshot_of(&self, pool: &Arc<Pool>) -> LoadSnapshot {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_of(pool) {
            return shared.snapshot();
        }
        pool.snapshot()
    }

    /// The pool `model` waits in: its own (configured, or made on demand
    /// with `per_model` when `make`), else the default pool.
    fn pool_for(&self, model: Option<&str>, make: bool) -> Arc<Pool> {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return self.default.clone();
        };
        if self.by_model.is_empty() && self.on_demand.is_none() {
            return self.default.clone();
        }
        let name = canonical_model(model);
        if let Some(pool) = self.by_model.get(&name) {
            return pool.clone();
        }
        self.on_demand
            .as_ref()
            .and_then(|models| {
                if make {
                    self.on_demand_pool(models, &name)
                } else {
                    models.get(&name)
                }
            })
            .unwrap_or_else(|| self.default.clone())
    }

    /// The pool a request for `model` waits in, made if it must be.
    fn pool(&self, model: Option<&str>) -> Arc<Pool> {
        self.pool_for(model, true)
    }

    /// Calls `f` on every pool: the default, the configured, those made
    /// on demand.
    fn each_pool(&self, mut f: impl FnMut(&Arc<Pool>)) {
        f(&self.default);
        self.by_model.values().for_each(&mut f);
        if let Some(models) = &self.on_demand {
            models.for_each(f);
        }
    }

    /// Every pool, in [`Scheduler::each_pool`]'s order.
    fn all_pools(&self) -> Vec<Arc<Pool>> {
        let mut pools = Vec::new();
        self.each_pool(|pool| pools.push(pool.clone()));
        pools
    }

    /// Where `ticket`, a request for `model` arriving now, would stand:
    /// the requests ahead of it in the order of service and its wait for
    /// a permit (the work ahead over what the pool measured). With its
    /// queue in Redis: every replica's tickets ahead of it, as the last
    /// report from Redis said (at most a quarter second old under load),
    /// each taken at the pool's average hold. Always `Some` (kept an
    /// `Option` for callers written when a shared queue had none).
    ///
    /// ```
    /// use corral_core::Priority;
    /// use corral_priority::{PriorityConfig, Scheduler, Ticket};
    ///
    /// let scheduler = Scheduler::new(&PriorityConfig::default()).unwrap();
    /// let ticket = Ticket {
    ///     agent: "a".into(),
    ///     priority: Priority::DEFAULT,
    ///     weight: 1.0,
    ///     cost: 100.0,
    ///     bytes: 0,
    ///     deadline: None,
    /// };
    /// let estimate = scheduler.estimate(&ticket, None).unwrap();
    /// assert_eq!(estimate.position, 0);
    /// assert_eq!(estimate.eta, Some(std::time::Duration::ZERO), "room now");
    /// ```
    pub fn estimate(&self, ticket: &Ticket, model: Option<&str>) -> Option<Estimate> {
        let me = crate::pool::Me::Arriving {
            agent: &ticket.agent,
            cost: ticket.cost,
            weight: ticket.weight,
        };
        let level = usize::from(ticket.priority.get() - 1);
        Some(match self.queue_of(model) {
            // Its pool is not made yet: nothing waits for its model.
            Queue::NotMade => Estimate::new(0, Some(std::time::Duration::ZERO)),
            Queue::Local(pool) => pool.estimate(level, me),
            #[cfg(feature = "redis")]
            Queue::Shared(shared) => shared.estimate(level, me),
        })
    }

    /// Where a request for `model` would wait.
    pub(crate) fn queue_of(&self, model: Option<&str>) -> Queue {
        let pool = self.pool_for(model, false);
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_of(&pool) {
            return Queue::Shared(shared);
        }
        // The name is made (an allocation) only where pools are made on
        // demand: ~1,000 instructions a request otherwise, for nothing.
        if self.on_demand.is_some()
            && model
                .filter(|m| !m.is_empty())
                .map(canonical_model)
                .is_some_and(|n| n != pool.name())
        {
            return Queue::NotMade;
        }
        Queue::Local(pool)
    }

    /// Lists `acquire` as request `id` of `agent` at `priority` while it
    /// waits, for [`Scheduler::waiting`]. A queue in Redis is not listed.
    pub fn list(&self, acquire: &mut Acquire, id: RequestId, agent: AgentId, priority: Priority) {
        if let Some(waits) = acquire.waits_in() {
            acquire.listed = Some(self.waiting.list(id, waits, agent, priority));
        }
    }

    /// Where request `id` stands while it waits: its place in the order
    /// of service, its wait so far and to come. `None` once it runs (or
    /// if it never waited here).
    ///
    /// ```
    /// use corral_core::{AgentId, Priority, RequestId};
    /// use corral_priority::{PriorityConfig, Scheduler, Ticket};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let scheduler = Scheduler::new(&PriorityConfig { capacity: 1, ..PriorityConfig::default() }).unwrap();
    /// let ticket = |agent: &str| Ticket {
    ///     agent: agent.into(),
    ///     priority: Priority::DEFAULT,
    ///     weight: 1.0,
    ///     cost: 100.0,
    ///     bytes: 0,
    ///     deadline: None,
    /// };
    /// let running = scheduler.acquire(ticket("a"), None).await.unwrap();
    /// let mut waiting = scheduler.acquire(ticket("b"), None);
    /// scheduler.list(&mut waiting, RequestId::from("req-b"), AgentId::from("b"), Priority::DEFAULT);
    /// let seen = scheduler.waiting("req-b").unwrap();
    /// assert_eq!(seen.estimate.position, 0, "next in line");
    /// drop(running);
    /// let permit = waiting.await.unwrap();
    /// assert!(scheduler.waiting("req-b").is_none(), "it runs");
    /// # drop(permit);
    /// # }
    /// ```
    pub fn waiting(&self, id: &str) -> Option<Waiter> {
        self.waiting.find(id)
    }

    /// Waits for a permit for `ticket` on `model`'s pool. The ticket is
    /// queued at once; dropping the future leaves the queue (or gives
    /// back a permit granted but not yet taken).
    pub fn acquire(&self, ticket: Ticket, model: Option<&str>) -> Acquire {
        self.acquire_in(ticket, model, None)
    }

    /// [`Scheduler::acquire`] for a request of conversation `session`
    /// (a hash of its `X-Session-Id`): with a fleet, it goes back to the
    /// upstream the conversation last ran on while that one has a permit
    /// free.
    pub fn acquire_in(&self, ticket: Ticket, model: Option<&str>, session: Option<u64>) -> Acquire {
        let pool = self.pool(model);
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_of(&pool) {
            return Acquire {
                kind: AcquireKind::Redis(Box::pin(shared.acquire(ticket))),
                estimate: None,
                listed: None,
            };
        }
        Acquire::local(pool, ticket, session, false)
    }

    fn set_pool_capacity(&self, pool: &Arc<Pool>, capacity: usize) {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_of(pool) {
            shared.set_capacity(capacity);
            return;
        }
        pool.set_capacity(capacity);
    }

    /// Changes the capacity at run time: the default pool's, and with
    /// `per_model` every pool made on demand (and those made later).
    pub fn set_capacity(&self, capacity: usize) {
        self.set_pool_capacity(&self.default, capacity);
        if let Some(models) = &self.on_demand {
            for pool in models.set_capacity(capacity) {
                self.set_pool_capacity(&pool, capacity);
            }
        }
    }

    /// Changes one model's capacity at run time (a pool made on demand
    /// keeps it when the capacity of all is changed later); `false` if the
    /// model has no pool of its own.
    pub fn set_model_capacity(&self, model: &str, capacity: usize) -> bool {
        let name = canonical_model(model);
        let pool = self
            .by_model
            .get(&name)
            .cloned()
            .or_else(|| self.on_demand.as_ref().and_then(|models| models.pin(&name)));
        match pool {
            Some(pool) => {
                self.set_pool_capacity(&pool, capacity);
                true
            }
            None => false,
        }
    }

    /// Whether each model gets a pool of its own when first asked for.
    pub fn per_model(&self) -> bool {
        self.on_demand.is_some()
    }
}
