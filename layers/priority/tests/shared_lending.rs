//! Lending the reserve with the pools in Redis: the same rule as the
//! local pool, across replicas. Each test starts a `redis-server` of its
//! own (or uses `REDIS_URL`), and runs in real time: Redis keeps time.
//!
//! ```sh
//! cargo test -p corral-priority --features redis --test shared_lending
//! ```

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ticket;
use corral_core::{redis, RedisState};
use corral_priority::{Permit, PriorityConfig, Reserve, Scheduler, Ticket};

/// A step that should take milliseconds: failing after this long.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .expect("step finished in time")
}

use corral_test_redis::Redis;

fn state(redis: &Redis, test: &str, replica: &str) -> RedisState {
    let prefix = format!("corral-lending-{}-{test}:", std::process::id());
    RedisState::new(&redis.url, &prefix, replica, Duration::from_millis(500)).unwrap()
}

/// A replica with `capacity` permits, the last held back for priority 1
/// and lent within `lend_within_ms`.
fn replica(
    redis: &Redis,
    test: &str,
    name: &str,
    capacity: usize,
    lend_within_ms: u64,
) -> Arc<Scheduler> {
    let config = PriorityConfig {
        capacity,
        aging: Duration::ZERO,
        reserve: Some(Reserve {
            lend_within: Duration::from_millis(lend_within_ms),
            ..Reserve::new(1, 1)
        }),
        ..PriorityConfig::default()
    };
    Scheduler::shared(&config, state(redis, test, name), Duration::from_secs(5)).unwrap()
}

/// Holds a permit of `agent` for `held`, then waits until Redis has
/// added the hold to the pool's average.
async fn learn(s: &Scheduler, probe: &RedisState, agent: &str, held: Duration) {
    let before = average_hold(probe).await;
    let permit = hold(s, agent, 5).await;
    tokio::time::sleep(held).await;
    drop(permit);
    within(async {
        while average_hold(probe).await == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn average_hold(probe: &RedisState) -> Option<String> {
    let mut get = redis::cmd("GET");
    get.arg(probe.key("prio:*:hold"));
    probe.query(&get).await.unwrap()
}

/// How many tickets wait in Redis.
async fn queued(probe: &RedisState) -> usize {
    let mut count = redis::cmd("ZCARD");
    count.arg(probe.key("prio:*:queue"));
    probe.query(&count).await.unwrap()
}

async fn until_queued(probe: &RedisState, n: usize) {
    within(async {
        while queued(probe).await != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A test's keys in a Redis of its own, and a probe into them.
struct Test {
    redis: Redis,
    name: &'static str,
    probe: RedisState,
}

impl Test {
    /// Starts the Redis of the test `name`.
    async fn start(name: &'static str) -> Self {
        let redis = Redis::start().await;
        let probe = state(&redis, name, "probe");
        Self { redis, name, probe }
    }

    /// Starts the test `name` with two replicas of two permits lending
    /// within 100 ms, the first taught that "short" holds a permit for
    /// 20 ms: the test and the replicas.
    async fn short_known(name: &'static str) -> (Self, Arc<Scheduler>, Arc<Scheduler>) {
        let test = Self::start(name).await;
        let one = test.replica("one", 2, 100);
        let two = test.replica("two", 2, 100);
        learn(&one, &test.probe, "short", Duration::from_millis(20)).await;
        (test, one, two)
    }

    /// Starts the test `name` with one replica of two permits lending
    /// within `lend_within_ms`, taught that `agent` holds a permit for
    /// `held`: the test and the replica.
    async fn one_taught(
        name: &'static str,
        lend_within_ms: u64,
        agent: &str,
        held: Duration,
    ) -> (Self, Arc<Scheduler>) {
        let test = Self::start(name).await;
        let one = test.replica("one", 2, lend_within_ms);
        learn(&one, &test.probe, agent, held).await;
        (test, one)
    }

    /// [`replica`] `name` of this test.
    fn replica(&self, name: &str, capacity: usize, lend_within_ms: u64) -> Arc<Scheduler> {
        replica(&self.redis, self.name, name, capacity, lend_within_ms)
    }
}

/// Takes a permit on `s` for `agent` at `priority`, which must be granted
/// within a step.
async fn hold(s: &Scheduler, agent: &str, priority: u8) -> Permit {
    within(s.acquire(ticket(agent, priority), None))
        .await
        .unwrap()
}

/// Acquires on `s` in a task of its own: granted later, or never.
fn waiting(s: &Arc<Scheduler>, ticket: Ticket) -> tokio::task::JoinHandle<Permit> {
    let s = s.clone();
    tokio::spawn(async move { s.acquire(ticket, None).await.unwrap() })
}

/// Holds one of `one`'s two permits, queues `tickets` behind it, then
/// asks for the reserve at priority 1: granted at once, with none of
/// `tickets` granted and nothing lent.
async fn the_reserve_waits_for_priority_one<const N: usize>(
    test: &Test,
    one: &Arc<Scheduler>,
    tickets: [Ticket; N],
) {
    let _running = hold(one, "other", 5).await;
    let waiters = tickets.map(|ticket| waiting(one, ticket));
    until_queued(&test.probe, N).await;
    let _urgent = hold(one, "urgent", 1).await;
    for (i, waiter) in waiters.iter().enumerate() {
        assert!(!waiter.is_finished(), "ticket {i} was granted");
    }
    assert_eq!(one.reserve_lent(), 0);
}

#[tokio::test]
async fn a_short_request_borrows_the_reserve_on_any_replica() {
    let (_test, one, two) = Test::short_known("short").await;
    let _running = hold(&one, "other", 5).await;
    // Replica one knows the agent: predicted 20 ms.
    let lent = hold(&one, "short", 5).await;
    drop(lent);
    // Replica two knows nothing of this agent: Redis' average hold decides.
    let _lent = hold(&two, "fresh", 5).await;
    assert_eq!(one.reserve_lent() + two.reserve_lent(), 2);
}

#[tokio::test]
async fn a_request_predicted_long_is_not_lent_and_the_reserve_waits_for_priority_one() {
    let (test, one) = Test::one_taught("long", 100, "slow", Duration::from_millis(300)).await;
    // "fresh": no history and an average of 300 ms: not lent either.
    let tickets = [ticket("slow", 5), ticket("fresh", 5)];
    the_reserve_waits_for_priority_one(&test, &one, tickets).await;
}

#[tokio::test]
async fn an_urgent_ticket_gets_the_next_permit_that_frees_and_lending_resumes_after() {
    let (test, one, two) = Test::short_known("urgent").await;
    let running = hold(&one, "other", 5).await;
    let lent = hold(&one, "short", 5).await;
    let low = waiting(&one, ticket("short", 5));
    until_queued(&test.probe, 1).await;
    let urgent = waiting(&two, ticket("urgent", 1));
    until_queued(&test.probe, 2).await;
    // The permit not lent frees first: the urgent ticket's, on the other
    // replica, though the lower one was queued before.
    drop(running);
    let urgent = within(urgent).await.unwrap();
    assert!(!low.is_finished());
    // The lent one comes back with nobody urgent waiting: lent again.
    drop(lent);
    let low = within(low).await.unwrap();
    drop((urgent, low));
    assert_eq!(one.reserve_lent() + two.reserve_lent(), 2);
}

#[tokio::test]
async fn with_lend_within_zero_the_shared_reserve_stays_strict() {
    let (test, one) = Test::one_taught("strict", 0, "short", Duration::from_millis(1)).await;
    the_reserve_waits_for_priority_one(&test, &one, [ticket("short", 5)]).await;
}
