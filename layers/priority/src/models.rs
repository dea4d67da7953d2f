//! Pools made on demand, one per model (`per_model`): Ollama's
//! parallelism is per loaded model, so each model Corral sees gets a pool
//! of the configured capacity the first time it is asked for.
//!
//! Model names come from clients: at most [`MAX_MODEL_POOLS`] are made,
//! and when that many exist a pool idle for [`IDLE_BEFORE_EVICTION`] makes
//! room (in one process; shared pools stay, their leases live in Redis),
//! so invented names cannot crowd the real models into the default pool
//! for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::pool::Pool;

/// The most pools made on demand: a request naming yet another model
/// waits in the default pool, so a client that invents model names cannot
/// grow the scheduler without bound.
pub const MAX_MODEL_POOLS: usize = 64;

/// How long a pool made on demand must have gone unused (nothing held,
/// nothing waiting) before another model may take its place.
pub const IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(60);

struct Lane {
    pool: Arc<Pool>,
    /// When it was last asked for, in ms since the registry was made.
    used: AtomicU64,
    /// Its capacity was set on its own: a new default leaves it.
    pinned: AtomicBool,
}

/// The pools made on demand and the capacity each new one gets.
pub(crate) struct Models {
    capacity: AtomicUsize,
    lanes: RwLock<HashMap<String, Lane>>,
    epoch: Instant,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Every write completes before anything can panic: the data stays
    // consistent.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Models {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            lanes: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `name`'s pool if it has one; marks it used.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Pool>> {
        let lanes = read(&self.lanes);
        let lane = lanes.get(name)?;
        lane.used.store(self.now_ms(), Ordering::Relaxed);
        Some(lane.pool.clone())
    }

    /// `name`'s pool, made by `make` (given the capacity) when it has none
    /// and there is room; `evict` says whether an idle pool may give its
    /// place. `None`: no room.
    pub(crate) fn get_or_make(
        &self,
        name: &str,
        evict: bool,
        make: impl FnOnce(usize) -> Arc<Pool>,
    ) -> Option<Arc<Pool>> {
        if let Some(pool) = self.get(name) {
            return Some(pool);
        }
        let now = self.now_ms();
        let mut lanes = write(&self.lanes);
        if let Some(lane) = lanes.get(name) {
            return Some(lane.pool.clone());
        }
        if lanes.len() >= MAX_MODEL_POOLS && !(evict && self.evict_idle(&mut lanes, now)) {
            return None;
        }
        let pool = make(self.capacity.load(Ordering::Relaxed));
        lanes.insert(
            name.to_string(),
            Lane {
                pool: pool.clone(),
                used: AtomicU64::new(now),
                pinned: AtomicBool::new(false),
            },
        );
        Some(pool)
    }

    /// Drops the least recently used pool that holds and queues nothing
    /// and has gone unused long enough; whether one was.
    fn evict_idle(&self, lanes: &mut HashMap<String, Lane>, now: u64) -> bool {
        let idle_ms = u64::try_from(IDLE_BEFORE_EVICTION.as_millis()).unwrap_or(u64::MAX);
        let oldest = lanes
            .iter()
            .filter(|(_, lane)| now.saturating_sub(lane.used.load(Ordering::Relaxed)) >= idle_ms)
            .filter(|(_, lane)| {
                let load = lane.pool.snapshot();
                load.in_flight == 0 && load.queued_total() == 0
            })
            .min_by_key(|(_, lane)| lane.used.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone());
        match oldest {
            Some(name) => {
                lanes.remove(&name);
                true
            }
            None => false,
        }
    }

    /// Whether no pool has been made yet.
    pub(crate) fn is_empty(&self) -> bool {
        read(&self.lanes).is_empty()
    }

    /// Calls `f` on every pool, under the read lock (no allocation: the
    /// scheduler's load is read on every request).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Pool>)) {
        for lane in read(&self.lanes).values() {
            f(&lane.pool);
        }
    }

    /// The capacity of the pools made from now on and of those whose
    /// capacity was not set on its own; the pools to change.
    pub(crate) fn set_capacity(&self, capacity: usize) -> Vec<Arc<Pool>> {
        self.capacity.store(capacity, Ordering::Relaxed);
        read(&self.lanes)
            .values()
            .filter(|lane| !lane.pinned.load(Ordering::Relaxed))
            .map(|lane| lane.pool.clone())
            .collect()
    }

    /// `name`'s pool, from now on left alone by [`Models::set_capacity`].
    pub(crate) fn pin(&self, name: &str) -> Option<Arc<Pool>> {
        let lanes = read(&self.lanes);
        let lane = lanes.get(name)?;
        lane.pinned.store(true, Ordering::Relaxed);
        Some(lane.pool.clone())
    }
}
