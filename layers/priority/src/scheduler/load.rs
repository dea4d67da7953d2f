//! What the scheduler tells of its load: per pool, in all, and the
//! fair-share counters.

use corral_core::{LoadSnapshot, UpstreamLoad};
use tokio::sync::Notify;

#[cfg(feature = "redis")]
use super::read;
use super::Scheduler;

impl Scheduler {
    /// The load of one model's pool (the default pool for a model without
    /// one).
    pub fn snapshot_for(&self, model: Option<&str>) -> LoadSnapshot {
        self.snapshot_of(&self.pool_for(model, false))
    }

    /// Each pool's load, by name (`*` is the default pool).
    pub fn pools(&self) -> Vec<(String, LoadSnapshot)> {
        self.all_pools()
            .iter()
            .map(|p| (p.name().to_string(), self.snapshot_of(p)))
            .collect()
    }

    /// How many times a reserved permit was lent to a lower priority,
    /// all pools (with shared state: by this replica's grants), since the
    /// start; also counted in [`RESERVE_LENT_TOTAL`].
    ///
    /// [`RESERVE_LENT_TOTAL`]: crate::metrics::RESERVE_LENT_TOTAL
    pub fn reserve_lent(&self) -> u64 {
        let local: u64 = self.all_pools().iter().map(|pool| pool.lent()).sum();
        #[cfg(feature = "redis")]
        let local = local + read(&self.shared).values().map(|p| p.lent()).sum::<u64>();
        local
    }

    /// The fair-share counter of `agent` in `model`'s pool: the weighted
    /// service it has received while it had work. `None` once forgotten.
    pub fn counter(&self, agent: &str, model: Option<&str>) -> Option<f64> {
        self.pool_for(model, false).counter(agent)
    }
}

impl UpstreamLoad for Scheduler {
    /// All pools added up: what the upstream as a whole is asked to do.
    fn snapshot(&self) -> LoadSnapshot {
        let mut total = self.snapshot_of(&self.default);
        let models_seen = self.on_demand.as_ref().is_some_and(|m| !m.is_empty());
        if models_seen && total.in_flight == 0 && total.queued_total() == 0 {
            // Every request naming a model has a pool of its own: the
            // default one, idle, is no capacity the load could use.
            total.capacity = 0;
        }
        let mut first = true;
        self.each_pool(|pool| {
            if std::mem::take(&mut first) {
                return; // the default, counted above
            }
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
        });
        if let Some(fleet) = &self.fleet {
            // Pools of one fleet share its permits: added up they would
            // count each server once per model.
            total.capacity = fleet.total_capacity();
        }
        total
    }

    fn changes(&self) -> Option<&Notify> {
        Some(&self.changes)
    }
}
