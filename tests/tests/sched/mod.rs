//! What the shared-scheduler tests share: a replica's Redis handle, a
//! ticket, a config, and what Redis holds.

#![allow(dead_code)] // each test file uses its own share

use std::sync::Arc;
use std::time::Duration;

use corral_core::{redis, Priority, RedisState};
use corral_e2e::{within, Redis};
use corral_priority::{Acquire, DeadlineExceeded, Permit, PriorityConfig, Scheduler, Ticket};
use tokio::task::JoinHandle;

/// A replica's scheduler: `config` with its pools in `redis` under
/// `prefix`, its leases `lease` long.
pub(crate) fn replica(
    redis: &Redis,
    prefix: &str,
    name: &str,
    config: &PriorityConfig,
    lease: Duration,
) -> Arc<Scheduler> {
    Scheduler::shared(config, state(redis, prefix, name), lease).unwrap()
}

/// Replicas `one` and `two` of `config`, with leases of 5 s.
pub(crate) fn two_replicas(
    redis: &Redis,
    prefix: &str,
    config: &PriorityConfig,
) -> (Arc<Scheduler>, Arc<Scheduler>) {
    let lease = Duration::from_secs(5);
    (
        replica(redis, prefix, "one", config, lease),
        replica(redis, prefix, "two", config, lease),
    )
}

/// The permit `acquire` is granted without waiting long.
pub(crate) async fn granted(acquire: Acquire) -> Permit {
    within(acquire).await.unwrap()
}

/// What a spawned waiter got once granted (its permit, or what it did
/// with it).
pub(crate) async fn joined<T>(waiter: JoinHandle<Result<T, DeadlineExceeded>>) -> T {
    within(waiter).await.unwrap().unwrap()
}

pub(crate) fn state(redis: &Redis, prefix: &str, replica: &str) -> RedisState {
    RedisState::new(&redis.url, prefix, replica, Duration::from_millis(500)).unwrap()
}

pub(crate) fn ticket(agent: &str, priority: u8) -> Ticket {
    Ticket {
        agent: agent.into(),
        priority: Priority::new(priority).unwrap(),
        weight: 1.0,
        cost: 100.0,
        bytes: 0,
        deadline: None,
    }
}

pub(crate) fn config(capacity: usize) -> PriorityConfig {
    PriorityConfig {
        capacity,
        aging: Duration::ZERO,
        ..PriorityConfig::default()
    }
}

/// Two permits, at most one of them an agent's.
pub(crate) fn capped() -> PriorityConfig {
    PriorityConfig {
        max_in_flight_per_agent: Some(1),
        ..config(2)
    }
}

/// A permit in the default pool and one in the model `big`'s own.
pub(crate) fn with_big_pool() -> PriorityConfig {
    PriorityConfig {
        model_capacity: [("big".to_string(), 1)].into_iter().collect(),
        ..config(1)
    }
}

/// How many tickets wait and how many permits are held, in Redis.
pub(crate) async fn counts(state: &RedisState) -> (usize, usize) {
    let mut queue = redis::cmd("ZCARD");
    queue.arg(state.key("prio:*:queue"));
    let mut leases = redis::cmd("ZCARD");
    leases.arg(state.key("prio:*:leases"));
    (
        state.query(&queue).await.unwrap(),
        state.query(&leases).await.unwrap(),
    )
}

pub(crate) async fn until_counts(state: &RedisState, expected: (usize, usize)) {
    within(async {
        loop {
            if counts(state).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

pub(crate) fn unique(test: &str) -> String {
    format!("corral-sched-{}-{test}:", std::process::id())
}
