//! Lending the reserve with the pools in Redis: the same rule as the
//! local pool, across replicas. Each test starts a `redis-server` of its
//! own (or uses `REDIS_URL`), and runs in real time: Redis keeps time.
//!
//! ```sh
//! cargo test -p corral-priority --features redis --test shared_lending
//! ```

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use corral_core::{redis, Priority, RedisState};
use corral_priority::{Permit, PriorityConfig, Reserve, Scheduler, Ticket};

/// A step that should take milliseconds: failing after this long.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .expect("step finished in time")
}

/// A `redis-server` of the test's own, stopped when dropped.
struct Redis {
    url: String,
    child: Option<std::process::Child>,
}

impl Redis {
    async fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self { url, child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        // A process has no event to wait on: poll until it answers.
        within(async {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: Some(child),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn state(redis: &Redis, test: &str, replica: &str) -> RedisState {
    let prefix = format!("corral-lending-{}-{test}:", std::process::id());
    RedisState::new(&redis.url, &prefix, replica, Duration::from_millis(500)).unwrap()
}

fn ticket(agent: &str, priority: u8) -> Ticket {
    Ticket {
        agent: agent.into(),
        priority: Priority::new(priority).unwrap(),
        weight: 1.0,
        cost: 100.0,
        bytes: 0,
        deadline: None,
    }
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
    let permit = within(s.acquire(ticket(agent, 5), None)).await.unwrap();
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

/// Acquires on `s` in a task of its own: granted later, or never.
fn waiting(s: &Arc<Scheduler>, ticket: Ticket) -> tokio::task::JoinHandle<Permit> {
    let s = s.clone();
    tokio::spawn(async move { s.acquire(ticket, None).await.unwrap() })
}

#[tokio::test]
async fn a_short_request_borrows_the_reserve_on_any_replica() {
    let redis = Redis::start().await;
    let one = replica(&redis, "short", "one", 2, 100);
    let two = replica(&redis, "short", "two", 2, 100);
    let probe = state(&redis, "short", "probe");
    learn(&one, &probe, "short", Duration::from_millis(20)).await;
    let _running = within(one.acquire(ticket("other", 5), None)).await.unwrap();
    // Replica one knows the agent: predicted 20 ms.
    let lent = within(one.acquire(ticket("short", 5), None)).await.unwrap();
    drop(lent);
    // Replica two knows nothing of this agent: Redis' average hold decides.
    let _lent = within(two.acquire(ticket("fresh", 5), None)).await.unwrap();
    assert_eq!(one.reserve_lent() + two.reserve_lent(), 2);
}

#[tokio::test]
async fn a_request_predicted_long_is_not_lent_and_the_reserve_waits_for_priority_one() {
    let redis = Redis::start().await;
    let one = replica(&redis, "long", "one", 2, 100);
    let probe = state(&redis, "long", "probe");
    learn(&one, &probe, "slow", Duration::from_millis(300)).await;
    let _running = within(one.acquire(ticket("other", 5), None)).await.unwrap();
    let slow = waiting(&one, ticket("slow", 5));
    // No history and an average of 300 ms: not lent either.
    let fresh = waiting(&one, ticket("fresh", 5));
    until_queued(&probe, 2).await;
    let _urgent = within(one.acquire(ticket("urgent", 1), None))
        .await
        .unwrap();
    assert!(!slow.is_finished() && !fresh.is_finished());
    assert_eq!(one.reserve_lent(), 0);
}

#[tokio::test]
async fn an_urgent_ticket_gets_the_next_permit_that_frees_and_lending_resumes_after() {
    let redis = Redis::start().await;
    let one = replica(&redis, "urgent", "one", 2, 100);
    let two = replica(&redis, "urgent", "two", 2, 100);
    let probe = state(&redis, "urgent", "probe");
    learn(&one, &probe, "short", Duration::from_millis(20)).await;
    let running = within(one.acquire(ticket("other", 5), None)).await.unwrap();
    let lent = within(one.acquire(ticket("short", 5), None)).await.unwrap();
    let low = waiting(&one, ticket("short", 5));
    until_queued(&probe, 1).await;
    let urgent = waiting(&two, ticket("urgent", 1));
    until_queued(&probe, 2).await;
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
    let redis = Redis::start().await;
    let one = replica(&redis, "strict", "one", 2, 0);
    let probe = state(&redis, "strict", "probe");
    learn(&one, &probe, "short", Duration::from_millis(1)).await;
    let _running = within(one.acquire(ticket("other", 5), None)).await.unwrap();
    let short = waiting(&one, ticket("short", 5));
    until_queued(&probe, 1).await;
    let _urgent = within(one.acquire(ticket("urgent", 1), None))
        .await
        .unwrap();
    assert!(!short.is_finished());
    assert_eq!(one.reserve_lent(), 0);
}
