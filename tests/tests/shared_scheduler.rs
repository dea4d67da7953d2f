//! The scheduler with its pools in Redis, several "replicas" (schedulers
//! with their own Redis connections and ids) in one test against a real
//! `redis-server`: priority order between them, cancellations that leave
//! the queue at once, races of cancels, deadlines and releases that never
//! leak a permit, and a Redis that is not there.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::RedisState;
use corral_e2e::{within, Redis};
use corral_priority::Scheduler;

mod sched;

use sched::{config, granted, joined, replica, state, ticket, two_replicas, unique, until_counts};

/// One holder of a permit, as the test counts them.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(running: &Arc<AtomicUsize>, peak: &AtomicUsize) -> Self {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        Self(running.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_freed_on_one_replica_goes_to_the_best_ticket_of_any_replica() {
    let redis = Redis::start().await;
    let prefix = unique("order");
    let (one, two) = two_replicas(&redis, &prefix, &config(1));
    let running = granted(one.acquire(ticket("a", 5), None)).await;
    let batch = tokio::spawn(one.acquire(ticket("batch", 9), None));
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (1, 1)).await;
    let urgent = tokio::spawn(two.acquire(ticket("urgent", 1), None));
    until_counts(&probe, (2, 1)).await;
    drop(running);
    // The permit was freed on replica one, which has a ticket waiting:
    // it goes to replica two's priority 1 all the same.
    let urgent = joined(urgent).await;
    assert!(!batch.is_finished());
    until_counts(&probe, (1, 1)).await;
    drop(urgent);
    let batch = joined(batch).await;
    drop(batch);
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_expired_tickets_leave_the_shared_queue_at_once() {
    let redis = Redis::start().await;
    let prefix = unique("cancel");
    let scheduler = replica(&redis, &prefix, "one", &config(1), Duration::from_secs(5));
    let probe = state(&redis, &prefix, "probe");
    let held = granted(scheduler.acquire(ticket("a", 5), None)).await;
    // Each gives its permit back as soon as it has it: the order among
    // equal tickets is their arrival in Redis, not their spawn order.
    let waiting: Vec<_> = (0..6)
        .map(|i| {
            let acquire = scheduler.acquire(ticket(&format!("w{i}"), 5), None);
            tokio::spawn(async move { acquire.await.map(drop) })
        })
        .collect();
    until_counts(&probe, (6, 1)).await;
    // Three leave (their clients disconnected), one runs out of time.
    for task in &waiting[..3] {
        task.abort();
    }
    until_counts(&probe, (3, 1)).await;
    let mut late = ticket("late", 5);
    late.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(100));
    let expired = within(scheduler.acquire(late, None)).await;
    assert!(expired.is_err(), "the deadline passed while it waited");
    until_counts(&probe, (3, 1)).await;
    // The rest are served one by one as permits come back.
    drop(held);
    for task in waiting.into_iter().skip(3) {
        joined(task).await;
    }
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cancels_deadlines_and_releases_on_three_replicas_never_leak_or_exceed_a_permit() {
    let redis = Redis::start().await;
    let prefix = unique("race");
    let schedulers: Vec<Arc<Scheduler>> = ["r1", "r2", "r3"]
        .iter()
        .map(|r| replica(&redis, &prefix, r, &config(2), Duration::from_secs(5)))
        .collect();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let scheduler = schedulers[(i % 3) as usize].clone();
        let (running, peak) = (running.clone(), peak.clone());
        let task = tokio::spawn(async move {
            let mut t = ticket(&format!("agent{}", i % 7), (i % 10 + 1) as u8);
            if i % 4 == 0 {
                t.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(i % 30));
            }
            let Ok(permit) = scheduler.acquire(t, None).await else {
                return;
            };
            // Counted out when dropped, so an aborted holder is too, and
            // before its permit goes back.
            let counted = Running::enter(&running, &peak);
            tokio::time::sleep(Duration::from_millis(i % 5)).await;
            drop(counted);
            drop(permit);
        });
        tasks.push(task);
    }
    // Some clients give up while they wait or run.
    tokio::time::sleep(Duration::from_millis(10)).await;
    for task in tasks.iter().step_by(5) {
        task.abort();
    }
    for task in tasks {
        let _ = within(task).await;
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "at most the capacity ran at once: {}",
        peak.load(Ordering::SeqCst)
    );
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (0, 0)).await;
    // Nothing leaked: every replica still gets both permits at once.
    for scheduler in &schedulers {
        let a = granted(scheduler.acquire(ticket("after", 1), None)).await;
        let b = granted(scheduler.acquire(ticket("after", 1), None)).await;
        drop((a, b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_redis_a_replica_schedules_alone_with_the_capacity() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = RedisState::new(
        &format!("redis://127.0.0.1:{port}"),
        "corral:",
        "alone",
        Duration::from_millis(100),
    )
    .unwrap();
    let scheduler = Scheduler::shared(&config(2), state.clone(), Duration::from_secs(5)).unwrap();
    let a = granted(scheduler.acquire(ticket("a", 5), None)).await;
    assert!(!state.is_up(), "the first call found Redis away");
    let b = granted(scheduler.acquire(ticket("b", 5), None)).await;
    let third = tokio::spawn(scheduler.acquire(ticket("c", 1), None));
    corral_e2e::eventually("the third waits in the local pool", || {
        corral_core::UpstreamLoad::snapshot(&*scheduler).queued_total() == 1
    })
    .await;
    assert!(!third.is_finished(), "the local pool holds the capacity");
    drop(a);
    let c = joined(third).await;
    drop((b, c));
}
