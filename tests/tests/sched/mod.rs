//! What the shared-scheduler tests share: a replica's Redis handle, a
//! ticket, a config, and what Redis holds.

use std::time::Duration;

use corral_core::{redis, Priority, RedisState};
use corral_e2e::{within, Redis};
use corral_priority::{PriorityConfig, Ticket};

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
