//! A pool whose permits and queue live in Redis, shared by every replica.
//!
//! The queue is a sorted set of tickets (`replica|seq|level|agent`) scored by
//! effective priority and arrival; `grant.lua` grants permits to its head
//! while fewer leases than the capacity are held, publishing each grant
//! on the owning replica's channel. A permit is a lease: this replica
//! renews its leases (and its own liveness) every third of the TTL, so
//! the permits of a replica that dies come back within one TTL and its
//! queued tickets are dropped. While Redis does not answer, tickets go to
//! the local pool, sized to this replica's share of the capacity.
//!
//! A reserved permit is lent as in the local pool. The replica that
//! queues a ticket marks its level with its prediction (its agent's
//! history says short, or there is none and the pool's average hold
//! decides); Redis keeps that average from the hold every release
//! reports.

use corral_core::lock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::metrics::RESERVE_LENT_TOTAL;

/// Ticket numbers, unique in the process: a ticket's id names one waiter
/// whichever pool it waits in.
pub(super) static SEQ: AtomicU64 = AtomicU64::new(0);
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{LoadSnapshot, RedisState};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Reserve;
use crate::pool::Pool;

mod estimate;
mod renew;
mod wait;

static GRANT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("grant.lua")));

/// The gauge of permits held across all replicas, per pool.
pub const SHARED_PERMITS_HELD: &str = "corral_shared_permits_held";

pub(crate) struct RedisPool {
    state: RedisState,
    name: String,
    keys: Vec<String>,
    grants_channel: String,
    aging_ms: u64,
    ttl: Duration,
    capacity: AtomicUsize,
    reserve: Option<Reserve>,
    per_agent: Option<usize>,
    /// The fallback while Redis is away, sized to this replica's share.
    pub(crate) local: Arc<Pool>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// The permits this replica holds, by ticket (a permit of the local
    /// pool, taken while Redis was away, too: renewals add it).
    held: Mutex<HashSet<String>>,
    /// A capacity an operator set that Redis has not taken yet.
    pending_capacity: Mutex<Option<usize>>,
    /// Permits held across replicas, as of the last script.
    held_everywhere: AtomicUsize,
    replicas: AtomicUsize,
    /// Whether Redis has told how many replicas are alive.
    counted: AtomicBool,
    /// Reserved permits this replica's script calls lent.
    lent: AtomicU64,
    /// What the last script call said of the queue, for estimates.
    seen: estimate::Seen,
}

struct Waiting {
    level: usize,
    since: Instant,
    granted: Option<oneshot::Sender<()>>,
}

/// What every script call reports.
struct Report {
    granted: Vec<String>,
}

impl RedisPool {
    pub(crate) fn new(
        state: RedisState,
        local: Arc<Pool>,
        capacity: usize,
        aging: Duration,
        ttl: Duration,
        reserve: Option<Reserve>,
        per_agent: Option<usize>,
    ) -> Arc<Self> {
        let name = local.name().to_string();
        let key = |k: &str| state.key(&format!("prio:{name}:{k}"));
        let keys = vec![
            key("queue"),
            key("leases"),
            key("capacity"),
            state.key("prio:replicas"),
            key("hold"),
        ];
        metrics::describe_gauge!(
            SHARED_PERMITS_HELD,
            "upstream permits held by all replicas together, per pool"
        );
        Arc::new(Self {
            grants_channel: state.key(&format!("prio:{name}:grants:")),
            keys,
            name,
            aging_ms: u64::try_from(aging.as_millis()).unwrap_or(u64::MAX),
            ttl,
            capacity: AtomicUsize::new(capacity),
            reserve,
            per_agent,
            local,
            waiting: Mutex::default(),
            held: Mutex::default(),
            pending_capacity: Mutex::default(),
            held_everywhere: AtomicUsize::new(0),
            replicas: AtomicUsize::new(1),
            counted: AtomicBool::new(false),
            lent: AtomicU64::new(0),
            seen: estimate::Seen::default(),
            state,
        })
    }

    /// The channel this replica hears this pool's grants on (without
    /// the prefix).
    fn own_grants(&self) -> String {
        format!("prio:{}:grants:{}", self.name, self.state.replica())
    }

    /// One call of the grant script; `extra` are the tickets a renewal
    /// re-adds, or the milliseconds a released permit was held.
    async fn run(
        &self,
        op: &str,
        ticket: &str,
        level: usize,
        extra: &[String],
    ) -> Result<Report, ()> {
        let reserve = self.reserve.unwrap_or(Reserve {
            lend_within: Duration::ZERO,
            ..Reserve::new(0, 10)
        });
        let mut args = vec![
            op.to_string(),
            ticket.to_string(),
            level.to_string(),
            self.aging_ms.to_string(),
            self.ttl.as_millis().to_string(),
            self.capacity.load(Ordering::Relaxed).to_string(),
            reserve.permits.to_string(),
            reserve.up_to_priority.to_string(),
            self.state.replica().to_string(),
            self.grants_channel.clone(),
            self.per_agent.unwrap_or(0).to_string(),
            reserve.lend_within.as_millis().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let reply: Vec<redis::Value> = self
            .state
            .script(&GRANT, &self.keys, &args)
            .await
            .map_err(drop)?;
        let mut values = reply.into_iter();
        let mut number = || match values.next() {
            Some(redis::Value::Int(n)) => usize::try_from(n).unwrap_or(0),
            _ => 0,
        };
        let held = number();
        let capacity = number();
        let replicas = number().max(1);
        let lent = number() as u64;
        // -1 (no hold yet) reads as 0: unknown.
        let hold_ms = number() as u64;
        let ahead: [usize; crate::pool::LEVELS] = std::array::from_fn(|_| number());
        self.seen.store(hold_ms, ahead);
        if lent > 0 {
            self.lent.fetch_add(lent, Ordering::Relaxed);
            metrics::counter!(RESERVE_LENT_TOTAL, "pool" => self.name.clone()).increment(lent);
        }
        self.held_everywhere.store(held, Ordering::Relaxed);
        self.replicas.store(replicas, Ordering::Relaxed);
        self.counted.store(true, Ordering::Relaxed);
        // An operator may have set it on another replica; kept here, it
        // is also what this replica asserts if Redis comes back empty.
        if capacity > 0 && lock(&self.pending_capacity).is_none() {
            self.capacity.store(capacity, Ordering::Relaxed);
        }
        metrics::gauge!(SHARED_PERMITS_HELD, "pool" => self.name.clone()).set(held as f64);
        self.local.set_capacity((capacity / replicas).max(1));
        let granted = values
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                _ => None,
            })
            .collect();
        Ok(Report { granted })
    }

    /// A grant heard on this pool's channel: its waiter is told, or, if
    /// nobody waits for it (it left, or a lost ticket was queued again),
    /// the permit goes back at once instead of idling for a lease.
    pub(crate) fn granted(self: &Arc<Self>, ticket: &str) {
        if let Some(waiting) = lock(&self.waiting).get_mut(ticket) {
            if let Some(tell) = waiting.granted.take() {
                let _ = tell.send(());
            }
            return;
        }
        // A script's report lists every replica's grants: only this
        // replica's own can be nobody's here.
        let own = ticket
            .strip_prefix(self.state.replica().as_ref())
            .is_some_and(|rest| rest.starts_with('|'));
        if own && !lock(&self.held).contains(ticket) {
            self.give_back(ticket.to_string(), "release");
        }
    }

    fn forget(&self, ticket: &str) {
        lock(&self.waiting).remove(ticket);
    }

    /// Gives `ticket` back (a permit or a place in the queue), without
    /// waiting for Redis.
    pub(crate) fn give_back(self: &Arc<Self>, ticket: String, op: &'static str) {
        lock(&self.held).remove(&ticket);
        self.forget(&ticket);
        let pool = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Failing, the lease runs out by itself.
                let _ = pool.run(op, &ticket, 0, &[]).await;
            });
        }
    }

    /// Gives back the permit of `ticket`, held for `held` (which Redis
    /// adds to the pool's average hold), without waiting for Redis.
    pub(crate) fn release(self: &Arc<Self>, ticket: String, held: Duration) {
        lock(&self.held).remove(&ticket);
        self.forget(&ticket);
        let pool = self.clone();
        let held = vec![held.as_millis().to_string()];
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Failing, the lease runs out by itself.
                let _ = pool.run("release", &ticket, 0, &held).await;
            });
        }
    }

    /// Reserved permits this replica's script calls lent.
    pub(crate) fn lent(&self) -> u64 {
        self.lent.load(Ordering::Relaxed)
    }

    /// How many replicas share the pool, until Redis has counted them:
    /// this replica's share while it has never reached Redis.
    pub(crate) fn assume_replicas(&self, replicas: usize) {
        if self.counted.load(Ordering::Relaxed) {
            return;
        }
        let replicas = replicas.max(1);
        self.replicas.store(replicas, Ordering::Relaxed);
        let capacity = self.capacity.load(Ordering::Relaxed);
        self.local.set_capacity((capacity / replicas).max(1));
    }

    /// Sets the shared capacity (all replicas read it); while Redis does
    /// not take it, it is kept and written at each renewal.
    pub(crate) fn set_capacity(self: &Arc<Self>, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        *lock(&self.pending_capacity) = Some(capacity);
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        self.local.set_capacity((capacity / replicas).max(1));
        let pool = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { pool.write_capacity(capacity).await });
        }
    }

    async fn write_capacity(self: &Arc<Self>, capacity: usize) {
        let mut command = redis::cmd("SET");
        command.arg(&self.keys[2]).arg(capacity);
        if self.state.query::<()>(&command).await.is_err() {
            return;
        }
        {
            let mut pending = lock(&self.pending_capacity);
            if *pending == Some(capacity) {
                *pending = None;
            }
        }
        // More room: grant at once.
        if let Ok(report) = self.run("tick", "", 0, &[]).await {
            for ticket in &report.granted {
                self.granted(ticket);
            }
        }
    }

    /// This replica's waiting tickets, with the permits held everywhere;
    /// the local pool's own while Redis is away.
    pub(crate) fn snapshot(&self) -> LoadSnapshot {
        let mut snapshot = self.local.snapshot();
        if !self.state.is_up() {
            return snapshot;
        }
        snapshot.capacity = self.capacity.load(Ordering::Relaxed);
        // The local count holds this replica's leases; Redis' all of them
        // (as of the last script).
        snapshot.in_flight = snapshot
            .in_flight
            .max(self.held_everywhere.load(Ordering::Relaxed));
        for waiting in lock(&self.waiting).values() {
            snapshot.queued[waiting.level] += 1;
            snapshot.oldest_waiting_since = Some(
                snapshot
                    .oldest_waiting_since
                    .map_or(waiting.since, |t| t.min(waiting.since)),
            );
        }
        snapshot
    }
}
