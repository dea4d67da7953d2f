//! The requests waiting now, by request id: where each stands, for the
//! admin API (`GET /corral/requests/{id}`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use corral_core::{lock, AgentId, Priority, RequestId};
use tokio::time::Instant;

use crate::pool::Pool;
use crate::Estimate;

/// Entries made, for telling two requests of one client-chosen id apart.
static ENTRIES: AtomicU64 = AtomicU64::new(0);

/// The requests waiting in the scheduler's pools.
#[derive(Default)]
pub(crate) struct Waiting {
    entries: Mutex<HashMap<RequestId, Entry>>,
}

struct Entry {
    number: u64,
    pool: Weak<Pool>,
    /// Its ticket in the pool.
    ticket: u64,
    agent: AgentId,
    priority: Priority,
    since: Instant,
}

/// A waiting request, as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiter {
    /// Whose it is.
    pub agent: AgentId,
    /// Its priority.
    pub priority: Priority,
    /// The queue it waits in: its model's, or `*`.
    pub pool: String,
    /// How long it has waited.
    pub waited: Duration,
    /// Where it stands now.
    pub estimate: Estimate,
}

/// Takes a request out of [`Waiting`] when it stops waiting (granted,
/// refused, or its client left).
pub(crate) struct Listed {
    waiting: Arc<Waiting>,
    id: RequestId,
    number: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut entries = lock(&self.waiting.entries);
        if entries
            .get(&self.id)
            .is_some_and(|e| e.number == self.number)
        {
            entries.remove(&self.id);
        }
    }
}

impl Waiting {
    /// Lists request `id` of `agent` at `priority`, waiting in `pool`
    /// under `ticket` since `since`.
    pub(crate) fn list(
        self: &Arc<Self>,
        id: RequestId,
        (pool, ticket, since): (&Arc<Pool>, u64, Instant),
        agent: AgentId,
        priority: Priority,
    ) -> Listed {
        let number = ENTRIES.fetch_add(1, Ordering::Relaxed);
        lock(&self.entries).insert(
            id.clone(),
            Entry {
                number,
                pool: Arc::downgrade(pool),
                ticket,
                agent,
                priority,
                since,
            },
        );
        Listed {
            waiting: self.clone(),
            id,
            number,
        }
    }

    /// Where request `id` stands, if it waits.
    pub(crate) fn find(&self, id: &str) -> Option<Waiter> {
        let (pool, ticket, agent, priority, since) = {
            let entries = lock(&self.entries);
            let entry = entries.get(id)?;
            (
                entry.pool.upgrade()?,
                entry.ticket,
                entry.agent.clone(),
                entry.priority,
                entry.since,
            )
        };
        if !pool.waits(ticket) {
            // Granted (its client has not taken the permit yet), or
            // claiming it in a shared fleet: it waits no more here.
            return None;
        }
        let level = usize::from(priority.get() - 1);
        Some(Waiter {
            agent,
            priority,
            pool: pool.name().to_string(),
            waited: since.elapsed(),
            estimate: pool.estimate(level, crate::pool::Me::Waiting(ticket)),
        })
    }
}
