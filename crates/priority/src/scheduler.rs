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
        }))
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
        let pool = self.pool(model).clone();
        let deadline = ticket.deadline;
        let id = pool.enqueue(ticket);
        Acquire {
            pool,
            id,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            done: false,
        }
    }

    /// Changes the default pool's capacity at run time.
    pub fn set_capacity(&self, capacity: usize) {
        self.default.set_capacity(capacity);
    }

    /// Changes one model's capacity at run time; `false` if the model has
    /// no pool of its own.
    pub fn set_model_capacity(&self, model: &str, capacity: usize) -> bool {
        match self.by_model.get(&canonical_model(model)) {
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
        self.pool(model).snapshot()
    }

    /// Each pool's load, by name (`*` is the default pool).
    pub fn pools(&self) -> Vec<(String, LoadSnapshot)> {
        std::iter::once(&self.default)
            .chain(self.by_model.values())
            .map(|p| (p.name().to_string(), p.snapshot()))
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
        let mut total = self.default.snapshot();
        for pool in self.by_model.values() {
            let s = pool.snapshot();
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
    pool: Arc<Pool>,
    id: u64,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("ticket", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl Future for Acquire {
    type Output = Result<Permit, DeadlineExceeded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Err(DeadlineExceeded {
                waited: Duration::ZERO,
            }));
        }
        let expired = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if expired {
            this.done = true;
            // Granted at the last instant or not: the answer would come too
            // late. Give the place (or the permit) to someone else.
            let waited = this.pool.withdraw(this.id).unwrap_or_default();
            return Poll::Ready(Err(DeadlineExceeded { waited }));
        }
        match this.pool.poll(this.id, cx.waker()) {
            pool::Poll::Waiting => Poll::Pending,
            pool::Poll::Granted(grant) => {
                this.done = true;
                Poll::Ready(Ok(Permit {
                    pool: this.pool.clone(),
                    agent: grant.agent,
                    charged: grant.charged,
                    weight: grant.weight,
                    waited: grant.waited,
                    actual: None,
                }))
            }
            pool::Poll::Gone => {
                this.done = true;
                Poll::Ready(Err(DeadlineExceeded {
                    waited: Duration::ZERO,
                }))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if !self.done {
            self.pool.withdraw(self.id);
        }
    }
}

/// A running request's hold on the upstream. Dropping it gives the permit
/// back and lets the next waiting request in.
pub struct Permit {
    pool: Arc<Pool>,
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

impl Permit {
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
        let correction = self
            .actual
            .map_or(0.0, |actual| actual / self.weight - self.charged);
        self.pool.release(&self.agent, correction);
    }
}
