//! Estimates for a queue kept in Redis: where a fresh arrival would
//! stand among every replica's tickets, and its wait, from what the last
//! call of the grant script reported.
//!
//! An estimate is made as a request arrives, without a round trip: the
//! script's report (the tickets ahead of a fresh arrival at each level,
//! the permits held everywhere, the pool's average hold) is kept, and an
//! estimate from a report older than [`FRESH`] asks for a new one in
//! the background, so that under load the reports are at most that old.
//! Tickets in Redis carry no predicted cost: each ahead is taken at the
//! average hold. Redis orders by priority and arrival (with aging), not
//! by service or length, so this is the order the estimate follows.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::RedisPool;
use crate::estimate::{eta, free_slots, Ahead, Estimate, HoldModel, Throughput};
use crate::pool::{Me, LEVELS};

/// A report older than this is refreshed when an estimate reads it.
pub(crate) const FRESH: Duration = Duration::from_millis(250);

/// The last report, as atomics: scripts write it, arrivals read it.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The pool's average hold in ms; 0 before any release.
    hold_ms: AtomicU64,
    ahead: [AtomicUsize; LEVELS],
    /// When it was reported, in ms since `epoch`.
    at_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    /// A refresh is on its way.
    refreshing: AtomicBool,
}

impl Seen {
    fn now_ms(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn store(&self, hold_ms: u64, ahead: [usize; LEVELS]) {
        self.hold_ms.store(hold_ms, Ordering::Relaxed);
        for (slot, count) in self.ahead.iter().zip(ahead) {
            slot.store(count, Ordering::Relaxed);
        }
        // Never 0 once a report came: 0 is "none yet".
        self.at_ms.store(self.now_ms().max(1), Ordering::Relaxed);
        self.refreshing.store(false, Ordering::Relaxed);
    }

    /// Whether a report came within [`FRESH`].
    fn is_fresh(&self) -> bool {
        let at = self.at_ms.load(Ordering::Relaxed);
        at != 0 && self.now_ms().saturating_sub(at) <= FRESH.as_millis() as u64
    }

    /// Whether the report is missing or older than [`FRESH`], and no
    /// refresh is on its way (then one is now, by the caller).
    fn wants_refresh(&self) -> bool {
        let at = self.at_ms.load(Ordering::Relaxed);
        let stale = at == 0 || self.now_ms().saturating_sub(at) > FRESH.as_millis() as u64;
        stale
            && self
                .refreshing
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl RedisPool {
    /// Where a request arriving now at `level` would stand in the shared
    /// queue, and its wait; the local pool's estimate while Redis is
    /// away.
    pub(crate) fn estimate(self: &Arc<Self>, level: usize, me: Me<'_>) -> Estimate {
        if !self.state.is_up() {
            return self.local.estimate(level, me);
        }
        if self.seen.wants_refresh() {
            self.refresh();
        }
        let level = level.min(LEVELS - 1);
        let count = self.seen.ahead[level].load(Ordering::Relaxed);
        let hold_ms = self.seen.hold_ms.load(Ordering::Relaxed);
        // Redis' average over every replica's holds; before one, what
        // this replica measured.
        let average = if hold_ms > 0 {
            Some(hold_ms as f64 / 1000.0)
        } else {
            self.local.average_hold().map(|d| d.as_secs_f64())
        };
        let capacity = self.capacity.load(Ordering::Relaxed).max(1);
        let held = self.held_everywhere.load(Ordering::Relaxed);
        let throughput = Throughput {
            capacity,
            in_flight: held,
            model: average.map(HoldModel::flat),
            slots: average.map_or_else(Vec::new, |average| {
                free_slots(capacity, std::iter::empty(), held, average)
            }),
            completions_per_sec: 0.0,
        };
        let ahead = Ahead { count, cost: 0.0 };
        Estimate::new(count, eta(ahead, &throughput))
    }

    /// Whether an estimate now may refuse a request: from a report at
    /// most [`FRESH`] old, or from the local pool while Redis is away.
    /// An older report (the queue may have drained since) lets the
    /// request in; its estimate asked for a new one.
    pub(crate) fn may_refuse(&self) -> bool {
        !self.state.is_up() || self.seen.is_fresh()
    }

    /// Asks Redis for a new report, in the background.
    fn refresh(self: &Arc<Self>) {
        let pool = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            pool.seen.refreshing.store(false, Ordering::Relaxed);
            return;
        };
        runtime.spawn(async move {
            match pool.run("tick", "", 0, &[]).await {
                Ok(report) => {
                    for ticket in &report.granted {
                        pool.granted(ticket);
                    }
                }
                Err(()) => pool.seen.refreshing.store(false, Ordering::Relaxed),
            }
        });
    }
}
