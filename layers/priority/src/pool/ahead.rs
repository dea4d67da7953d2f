//! The work ahead of a request in the order of service, for its
//! estimate ([`crate::Estimate`]).

use corral_core::lock;
use tokio::time::Instant;

use super::{Pool, State, LEVELS};
use crate::estimate::{eta, Ahead, Estimate, Throughput};

/// At most this many requests of one level are counted one by one (a
/// live lookup, or aged requests of a worse level): an estimate must not
/// walk a queue of thousands under the pool's lock.
const MAX_COUNTED: usize = 1024;

impl Pool {
    /// Where a request at `level` stands: the requests ahead of it
    /// (every better level, its own level's earlier arrivals, and worse
    /// levels' requests aged past it) and its wait. `me`, the request's
    /// ticket once it waits here (tickets are numbered in arrival order);
    /// `None` for one arriving now (behind everything queued).
    pub(crate) fn estimate(&self, level: usize, me: Option<u64>) -> Estimate {
        let now = Instant::now();
        let state = lock(&self.state);
        let ahead = self.ahead(&state, level.min(LEVELS - 1), me, now);
        let capacity = match &self.fleet {
            Some(link) => link.fleet.capacity_for(&link.model),
            None => state.capacity,
        };
        let throughput = Throughput {
            capacity,
            in_flight: state.in_flight,
            seconds_per_cost: state.holds.pool_rate(),
            average_hold: state.holds.pool().map(|d| d.as_secs_f64()),
            completions_per_sec: state.drain_rate(now),
        };
        Estimate {
            position: ahead.count,
            eta: eta(ahead, throughput),
        }
    }

    fn ahead(&self, state: &State, level: usize, me: Option<u64>, now: Instant) -> Ahead {
        let mut ahead = Ahead::default();
        // One arriving now is behind all of its level: the totals.
        let last = if me.is_none() { level + 1 } else { level };
        for better in 0..last {
            ahead.count += state.queued[better];
            ahead.cost += state.queued_cost[better];
        }
        // Queued at or before `until`, and before `me`.
        let before =
            |&(at, id): &(Instant, u64), until: Instant| at <= until && me.is_none_or(|me| id < me);
        let mut count = |level: usize, until: Instant| {
            for (_, id) in state.oldest[level]
                .iter()
                .take_while(|entry| before(entry, until))
                .take(MAX_COUNTED)
            {
                ahead.count += 1;
                ahead.cost += state.waiters.get(id).map_or(0.0, |w| w.cost);
            }
        };
        if me.is_some() {
            count(level, now);
        }
        // A worse level's request that waited `steps` aging periods is
        // `steps` levels better: past this one's level, it is ahead.
        if !self.aging.is_zero() {
            for (steps, worse) in (level + 1..LEVELS).enumerate() {
                let aged = self.aging * u32::try_from(steps + 1).unwrap_or(u32::MAX);
                if let Some(until) = now.checked_sub(aged) {
                    count(worse, until);
                }
            }
        }
        ahead
    }
}
