//! A scheduler whose pools live in Redis.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{canonical_model, Scheduler};
use crate::config::PriorityConfig;
use crate::pool::Pool;
use crate::redis::RedisPool;

impl Scheduler {
    /// A scheduler whose pools live in Redis, shared by every replica on
    /// the same `state` (same URL and key prefix): the upstream sees at
    /// most each pool's capacity whichever replica the requests came
    /// through, and the queue is ordered by priority (aged) and arrival
    /// across replicas. Permits are leases of `lease_ttl`, renewed every
    /// third of it: a replica that dies gives its permits back within one
    /// TTL. While Redis does not answer, each replica schedules alone
    /// with its share of the capacity (capacity / live replicas, at least
    /// one). `max_in_flight_per_agent` and `reserve` hold across
    /// replicas; fair share between agents holds within a replica, not
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
            RedisPool::new(
                state.clone(),
                pool.clone(),
                capacity,
                config.aging,
                lease_ttl,
                config.reserve,
                config.max_in_flight_per_agent,
            )
        };
        let mut shared = HashMap::new();
        shared.insert("*".to_string(), wrap(&scheduler.default, config.capacity));
        for (model, capacity) in &config.model_capacity {
            let key = canonical_model(model);
            if let Some(pool) = scheduler.by_model.get(&key) {
                shared.insert(key, wrap(pool, *capacity));
            }
        }
        for pool in shared.values() {
            tokio::spawn(pool.clone().keep_alive());
            tokio::spawn(pool.clone().hear_grants());
        }
        scheduler.shared = RwLock::new(shared);
        scheduler.backend = Some((state, lease_ttl));
        Ok(Arc::new(scheduler))
    }
}
