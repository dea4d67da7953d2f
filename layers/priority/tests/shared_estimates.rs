//! Estimates and deadline refusals with the queue in Redis: a replica
//! counts every replica's tickets ahead of an arrival, from the grant
//! script's last report. Each test starts a `redis-server` of its own
//! (or uses `REDIS_URL`), and runs in real time: Redis keeps time.
//!
//! ```sh
//! cargo test -p corral-priority --features redis --test shared_estimates
//! ```

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ticket;
use corral_core::RedisState;
use corral_priority::{PriorityConfig, Scheduler, Ticket};
use corral_test_redis::Redis;
use tokio::time::Instant;

/// A step that should take milliseconds: failing after this long.
const STEP: Duration = Duration::from_secs(10);

fn replica(redis: &Redis, name: &str) -> Arc<Scheduler> {
    let prefix = format!("corral-estimates-{}:", std::process::id());
    let state = RedisState::new(&redis.url, &prefix, name, Duration::from_millis(500)).unwrap();
    let config = PriorityConfig {
        capacity: 1,
        aging: Duration::ZERO,
        ..PriorityConfig::default()
    };
    Scheduler::shared(&config, state, Duration::from_secs(5)).unwrap()
}

/// A request of `agent` at priority 5 with `deadline` to go.
fn due_in(agent: &str, deadline: Duration) -> Ticket {
    Ticket {
        deadline: Some(Instant::now() + deadline),
        ..ticket(agent, 5)
    }
}

#[tokio::test]
async fn another_replicas_tickets_are_ahead_and_a_deadline_past_them_is_refused() {
    let redis = Redis::start().await;
    let one = replica(&redis, "one");
    let two = replica(&redis, "two");
    // The pool learns a hold of about 300 ms.
    let permit = tokio::time::timeout(STEP, one.acquire(ticket("teacher", 5), None))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(permit);
    // One runs (on "one"), two wait (on "two").
    let running = tokio::time::timeout(STEP, one.acquire(ticket("r", 5), None))
        .await
        .unwrap()
        .unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let two = two.clone();
            tokio::spawn(async move { two.acquire(ticket(&format!("w{i}"), 5), None).await })
        })
        .collect();
    // "one" sees them once a report newer than their arrival came: its
    // estimates ask for one when theirs is over 250 ms old.
    let arrival = ticket("new", 5);
    let estimate = tokio::time::timeout(STEP, async {
        loop {
            let estimate = one.estimate(&arrival, None).unwrap();
            if estimate.position == 2 && estimate.eta.is_some() {
                return estimate;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the other replica's tickets seen");
    // Half a hold for the running one, a hold each for the two: ~750 ms.
    let eta = estimate.eta.unwrap();
    assert!(
        eta >= Duration::from_millis(500) && eta <= Duration::from_secs(2),
        "{estimate:?}"
    );
    // A deadline shorter than that is refused at arrival, with no place
    // kept: back when the work ahead is down to its deadline (once the
    // report is fresh: on an older one it would be let in).
    let refusal = tokio::time::timeout(STEP, async {
        loop {
            match one.admit(&due_in("hurried", Duration::from_millis(100)), None, None) {
                Err(refusal) => return refusal,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("refused on a fresh report");
    assert!(!refusal.reserved());
    assert_eq!(refusal.estimate().position, 2);
    let retry = refusal.retry_after().unwrap();
    assert!(
        retry + Duration::from_millis(100) >= refusal.estimate().eta.unwrap()
            && retry < refusal.estimate().eta.unwrap(),
        "{refusal:?}"
    );
    // One with time enough is let in with its estimate.
    let admitted = one
        .admit(&due_in("patient", Duration::from_secs(60)), None, None)
        .unwrap();
    assert_eq!(admitted.estimate.unwrap().position, 2);
    drop(running);
    for waiter in waiting {
        let permit = tokio::time::timeout(STEP, waiter).await.unwrap().unwrap();
        drop(permit.unwrap());
    }
}
