//! The scheduler: pools of upstream permits, tickets that wait for them,
//! and permits that give them back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_core::{AgentId, LoadSnapshot, UpstreamLoad};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::config::PriorityConfig;
use crate::error::DeadlineExceeded;
use crate::pool::{self, Pool, Ticket};
#[cfg(feature = "redis")]
use crate::shared::SharedPool;

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
    default: Arc<Pool>,
    by_model: HashMap<String, Arc<Pool>>,
    changes: Arc<Notify>,
    /// With shared state, each pool's Redis side, by pool name.
    #[cfg(feature = "redis")]
    shared: HashMap<String, Arc<SharedPool>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("load", &self.snapshot())
            .field("models", &self.by_model.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Ollama names `llama3` and `llama3:latest` the same model.
pub(crate) fn canonical_model(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

impl Scheduler {
    /// A scheduler for `config`, or the key and reason it is refused for.
    pub fn new(config: &PriorityConfig) -> Result<Arc<Self>, corral_core::ConfigError> {
        config.validate()?;
        let cap = config.max_in_flight_per_agent;
        let changes = Arc::new(Notify::new());
        let pool = |name: String, capacity| {
            Arc::new(Pool::new(
                name,
                capacity,
                config.aging,
                cap,
                config.reserve,
                changes.clone(),
            ))
        };
        let default = pool("*".into(), config.capacity);
        let by_model = config
            .model_capacity
            .iter()
            .map(|(model, capacity)| {
                let key = canonical_model(model);
                (key.clone(), pool(key, *capacity))
            })
            .collect();
        Ok(Arc::new(Self {
            default,
            by_model,
            changes,
            #[cfg(feature = "redis")]
            shared: HashMap::new(),
        }))
    }

    /// A scheduler whose pools live in Redis, shared by every replica on
    /// the same `state` (same URL and key prefix): the upstream sees at
    /// most each pool's capacity whichever replica the requests came
    /// through, and the queue is ordered by priority (aged) and arrival
    /// across replicas. Permits are leases of `lease_ttl`, renewed every
    /// third of it: a replica that dies gives its permits back within one
    /// TTL. While Redis does not answer, each replica schedules alone
    /// with its share of the capacity (capacity / live replicas, at least
    /// one). Fair share between agents holds within a replica, not
    /// across them: in Redis, equal priorities go by arrival.
    ///
    /// Must be called inside a Tokio runtime: it spawns the tasks that
    /// renew leases and hear grants.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use corral_core::RedisState;
    /// use corral_priority::{PriorityConfig, Scheduler};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
    /// let scheduler = Scheduler::shared(&PriorityConfig::default(), state, Duration::from_secs(10)).unwrap();
    /// # drop(scheduler);
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn shared(
        config: &PriorityConfig,
        state: corral_core::RedisState,
        lease_ttl: Duration,
    ) -> Result<Arc<Self>, corral_core::ConfigError> {
        if lease_ttl < Duration::from_millis(300) {
            return Err(corral_core::ConfigError::new(
                "lease_ttl",
                format!("{lease_ttl:?} is too short to renew: use 300ms or more"),
            ));
        }
        let local = Self::new(config)?;
        let mut scheduler = Arc::try_unwrap(local).map_err(|_| {
            corral_core::ConfigError::new("capacity", "the scheduler is already shared")
        })?;
        let wrap = |pool: &Arc<Pool>, capacity: usize| {
            SharedPool::new(
                state.clone(),
                pool.clone(),
                capacity,
                config.aging,
                lease_ttl,
                config.reserve,
            )
        };
        scheduler
            .shared
            .insert("*".into(), wrap(&scheduler.default, config.capacity));
        for (model, capacity) in &config.model_capacity {
            let key = canonical_model(model);
            if let Some(pool) = scheduler.by_model.get(&key) {
                let shared = wrap(pool, *capacity);
                scheduler.shared.insert(key, shared);
            }
        }
        let pools: Vec<Arc<SharedPool>> = scheduler.shared.values().cloned().collect();
        for pool in &pools {
            tokio::spawn(pool.clone().keep_alive());
        }
        tokio::spawn(crate::shared::hear_grants(state, pools));
        Ok(Arc::new(scheduler))
    }

    #[cfg(feature = "redis")]
    fn shared_pool(&self, model: Option<&str>) -> Option<&Arc<SharedPool>> {
        if self.shared.is_empty() {
            return None;
        }
        let name = self.pool(model).name();
        self.shared.get(name)
    }

    fn snapshot_of(&self, pool: &Arc<Pool>) -> LoadSnapshot {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared.get(pool.name()) {
            return shared.snapshot();
        }
        pool.snapshot()
    }

    fn pool(&self, model: Option<&str>) -> &Arc<Pool> {
        if self.by_model.is_empty() {
            return &self.default;
        }
        model
            .and_then(|m| self.by_model.get(&canonical_model(m)))
            .unwrap_or(&self.default)
    }

    /// Waits for a permit for `ticket` on `model`'s pool. The ticket is
    /// queued at once; dropping the future leaves the queue (or gives
    /// back a permit granted but not yet taken).
    pub fn acquire(&self, ticket: Ticket, model: Option<&str>) -> Acquire {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared_pool(model) {
            return Acquire {
                kind: AcquireKind::Shared(Box::pin(shared.clone().acquire(ticket))),
            };
        }
        Acquire::local(self.pool(model).clone(), ticket)
    }

    /// Changes the default pool's capacity at run time.
    pub fn set_capacity(&self, capacity: usize) {
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared.get("*") {
            shared.set_capacity(capacity);
            return;
        }
        self.default.set_capacity(capacity);
    }

    /// Changes one model's capacity at run time; `false` if the model has
    /// no pool of its own.
    pub fn set_model_capacity(&self, model: &str, capacity: usize) -> bool {
        let name = canonical_model(model);
        #[cfg(feature = "redis")]
        if let Some(shared) = self.shared.get(&name) {
            shared.set_capacity(capacity);
            return true;
        }
        match self.by_model.get(&name) {
            Some(pool) => {
                pool.set_capacity(capacity);
                true
            }
            None => false,
        }
    }

    /// The load of one model's pool (the default pool for a model without
    /// one).
    pub fn snapshot_for(&self, model: Option<&str>) -> LoadSnapshot {
        self.snapshot_of(self.pool(model))
    }

    /// Each pool's load, by name (`*` is the default pool).
    pub fn pools(&self) -> Vec<(String, LoadSnapshot)> {
        std::iter::once(&self.default)
            .chain(self.by_model.values())
            .map(|p| (p.name().to_string(), self.snapshot_of(p)))
            .collect()
    }

    /// The fair-share counter of `agent` in `model`'s pool: the weighted
    /// service it has received while it had work. `None` once forgotten.
    pub fn counter(&self, agent: &str, model: Option<&str>) -> Option<f64> {
        self.pool(model).counter(agent)
    }
}

impl UpstreamLoad for Scheduler {
    /// All pools added up: what the upstream as a whole is asked to do.
    fn snapshot(&self) -> LoadSnapshot {
        let mut total = self.snapshot_of(&self.default);
        for pool in self.by_model.values() {
            let s = self.snapshot_of(pool);
            total.capacity += s.capacity;
            total.in_flight += s.in_flight;
            for (t, q) in total.queued.iter_mut().zip(s.queued) {
                *t += q;
            }
            total.queued_bytes += s.queued_bytes;
            total.oldest_waiting_since = match (total.oldest_waiting_since, s.oldest_waiting_since)
            {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            total.completions_per_sec += s.completions_per_sec;
        }
        total
    }

    fn changes(&self) -> Option<&Notify> {
        Some(&self.changes)
    }
}

/// A request waiting for its permit. Resolves to the [`Permit`], or to
/// [`DeadlineExceeded`] when the ticket's deadline passes first.
#[must_use = "a ticket waits only while its Acquire is polled or held"]
pub struct Acquire {
    kind: AcquireKind,
}

enum AcquireKind {
    Local {
        pool: Arc<Pool>,
        id: u64,
        deadline: Option<Pin<Box<Sleep>>>,
        done: bool,
    },
    /// Waiting in Redis: the shared pool's own future, which leaves the
    /// queue when dropped.
    #[cfg(feature = "redis")]
    Shared(Pin<Box<dyn Future<Output = Result<Permit, DeadlineExceeded>> + Send>>),
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            AcquireKind::Local { id, done, .. } => f
                .debug_struct("Acquire")
                .field("ticket", id)
                .field("done", done)
                .finish(),
            #[cfg(feature = "redis")]
            AcquireKind::Shared(_) => f.debug_struct("Acquire").field("shared", &true).finish(),
        }
    }
}

impl Acquire {
    /// Queues `ticket` in `pool`.
    pub(crate) fn local(pool: Arc<Pool>, ticket: Ticket) -> Self {
        let deadline = ticket.deadline;
        let id = pool.enqueue(ticket);
        Self {
            kind: AcquireKind::Local {
                pool,
                id,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                done: false,
            },
        }
    }
}

impl Future for Acquire {
    type Output = Result<Permit, DeadlineExceeded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (pool, id, deadline, done) = match &mut self.kind {
            AcquireKind::Local {
                pool,
                id,
                deadline,
                done,
            } => (pool, *id, deadline, done),
            #[cfg(feature = "redis")]
            AcquireKind::Shared(future) => return future.as_mut().poll(cx),
        };
        if *done {
            return Poll::Ready(Err(DeadlineExceeded {
                waited: Duration::ZERO,
            }));
        }
        let expired = deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if expired {
            *done = true;
            // Granted at the last instant or not: the answer would come too
            // late. Give the place (or the permit) to someone else.
            let waited = pool.withdraw(id).unwrap_or_default();
            return Poll::Ready(Err(DeadlineExceeded { waited }));
        }
        match pool.poll(id, cx.waker()) {
            pool::Poll::Waiting => Poll::Pending,
            pool::Poll::Granted(grant) => {
                *done = true;
                Poll::Ready(Ok(Permit {
                    holder: Holder::Local(pool.clone()),
                    agent: grant.agent,
                    charged: grant.charged,
                    weight: grant.weight,
                    waited: grant.waited,
                    actual: None,
                }))
            }
            pool::Poll::Gone => {
                *done = true;
                Poll::Ready(Err(DeadlineExceeded {
                    waited: Duration::ZERO,
                }))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        match &self.kind {
            AcquireKind::Local { pool, id, done, .. } => {
                if !*done {
                    pool.withdraw(*id);
                }
            }
            // Its own future leaves the queue when dropped.
            #[cfg(feature = "redis")]
            AcquireKind::Shared(_) => {}
        }
    }
}

/// A running request's hold on the upstream. Dropping it gives the permit
/// back and lets the next waiting request in.
pub struct Permit {
    holder: Holder,
    agent: AgentId,
    charged: f64,
    weight: f64,
    waited: Duration,
    actual: Option<f64>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("agent", &self.agent)
            .field("waited", &self.waited)
            .finish()
    }
}

enum Holder {
    Local(Arc<Pool>),
    /// A lease in Redis, by its ticket; `local` when the permit came
    /// from the fallback pool while Redis was away (the ticket then
    /// tells Redis about it once it is back).
    #[cfg(feature = "redis")]
    Shared {
        pool: Arc<SharedPool>,
        ticket: String,
        local: bool,
    },
}

impl Permit {
    #[cfg(feature = "redis")]
    pub(crate) fn shared(
        pool: Arc<SharedPool>,
        ticket: String,
        agent: AgentId,
        waited: Duration,
    ) -> Self {
        pool.local.occupy();
        Self {
            holder: Holder::Shared {
                pool,
                ticket,
                local: false,
            },
            agent,
            charged: 0.0,
            weight: 1.0,
            waited,
            actual: None,
        }
    }

    /// A permit of the fallback pool, also held under `ticket` so that
    /// Redis counts it once it is back.
    #[cfg(feature = "redis")]
    pub(crate) fn into_shared(mut self, pool: Arc<SharedPool>, ticket: String) -> Self {
        self.holder = Holder::Shared {
            pool,
            ticket,
            local: true,
        };
        self
    }

    /// How long the request waited for this permit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Records what the request really cost (prompt tokens + 2 × generated
    /// tokens, once the response says), so the agent's counter is
    /// corrected when the permit is given back.
    pub fn settle(&mut self, cost: f64) {
        self.actual = Some(cost);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &mut self.holder {
            Holder::Local(pool) => {
                let correction = self
                    .actual
                    .map_or(0.0, |actual| actual / self.weight - self.charged);
                pool.release(&self.agent, correction);
            }
            #[cfg(feature = "redis")]
            Holder::Shared {
                pool,
                ticket,
                local,
            } => {
                pool.give_back(std::mem::take(ticket), "release");
                if *local {
                    let correction = self
                        .actual
                        .map_or(0.0, |actual| actual / self.weight - self.charged);
                    pool.local.release(&self.agent, correction);
                } else {
                    pool.local.vacate();
                }
            }
        }
    }
}
