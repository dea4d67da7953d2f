//! The scheduler with its pools in Redis, several "replicas" (schedulers
//! with their own Redis connections and ids) in one test against a real
//! `redis-server`: priority order between them, cancellations that leave
//! the queue at once, races of cancels, deadlines and releases that never
//! leak a permit, and a Redis that is not there.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::{redis, Priority, RedisState};
use corral_e2e::{within, Redis};
use corral_priority::{PriorityConfig, Scheduler, Ticket};

fn state(redis: &Redis, prefix: &str, replica: &str) -> RedisState {
    RedisState::new(&redis.url, prefix, replica, Duration::from_millis(500)).unwrap()
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

fn config(capacity: usize) -> PriorityConfig {
    PriorityConfig {
        capacity,
        aging: Duration::ZERO,
        ..PriorityConfig::default()
    }
}

/// How many tickets wait and how many permits are held, in Redis.
async fn counts(state: &RedisState) -> (usize, usize) {
    let mut queue = redis::cmd("ZCARD");
    queue.arg(state.key("prio:*:queue"));
    let mut leases = redis::cmd("ZCARD");
    leases.arg(state.key("prio:*:leases"));
    (
        state.query(&queue).await.unwrap(),
        state.query(&leases).await.unwrap(),
    )
}

async fn until_counts(state: &RedisState, expected: (usize, usize)) {
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

fn unique(test: &str) -> String {
    format!("corral-sched-{}-{test}:", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_freed_on_one_replica_goes_to_the_best_ticket_of_any_replica() {
    let redis = Redis::start().await;
    let prefix = unique("order");
    let one = Scheduler::shared(
        &config(1),
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let two = Scheduler::shared(
        &config(1),
        state(&redis, &prefix, "two"),
        Duration::from_secs(5),
    )
    .unwrap();
    let running = within(one.acquire(ticket("a", 5), None)).await.unwrap();
    let batch = tokio::spawn(one.acquire(ticket("batch", 9), None));
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (1, 1)).await;
    let urgent = tokio::spawn(two.acquire(ticket("urgent", 1), None));
    until_counts(&probe, (2, 1)).await;
    drop(running);
    // The permit was freed on replica one, which has a ticket waiting:
    // it goes to replica two's priority 1 all the same.
    let urgent = within(urgent).await.unwrap().unwrap();
    assert!(!batch.is_finished());
    until_counts(&probe, (1, 1)).await;
    drop(urgent);
    let batch = within(batch).await.unwrap().unwrap();
    drop(batch);
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_expired_tickets_leave_the_shared_queue_at_once() {
    let redis = Redis::start().await;
    let prefix = unique("cancel");
    let scheduler = Scheduler::shared(
        &config(1),
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let probe = state(&redis, &prefix, "probe");
    let held = within(scheduler.acquire(ticket("a", 5), None))
        .await
        .unwrap();
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
        within(task).await.unwrap().unwrap();
    }
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cancels_deadlines_and_releases_on_three_replicas_never_leak_or_exceed_a_permit() {
    let redis = Redis::start().await;
    let prefix = unique("race");
    let schedulers: Vec<Arc<Scheduler>> = ["r1", "r2", "r3"]
        .iter()
        .map(|r| {
            Scheduler::shared(
                &config(2),
                state(&redis, &prefix, r),
                Duration::from_secs(5),
            )
            .unwrap()
        })
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
        let a = within(scheduler.acquire(ticket("after", 1), None))
            .await
            .unwrap();
        let b = within(scheduler.acquire(ticket("after", 1), None))
            .await
            .unwrap();
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
    let a = within(scheduler.acquire(ticket("a", 5), None))
        .await
        .unwrap();
    assert!(!state.is_up(), "the first call found Redis away");
    let b = within(scheduler.acquire(ticket("b", 5), None))
        .await
        .unwrap();
    let third = tokio::spawn(scheduler.acquire(ticket("c", 1), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "the local pool holds the capacity");
    drop(a);
    let c = within(third).await.unwrap().unwrap();
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_cap_holds_across_replicas() {
    let redis = Redis::start().await;
    let prefix = unique("cap");
    let capped = PriorityConfig {
        max_in_flight_per_agent: Some(1),
        ..config(2)
    };
    let one = Scheduler::shared(
        &capped,
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let two = Scheduler::shared(
        &capped,
        state(&redis, &prefix, "two"),
        Duration::from_secs(5),
    )
    .unwrap();
    let first = within(one.acquire(ticket("a", 5), None)).await.unwrap();
    // A permit is free, but agent a runs one already (on the other replica).
    let second = tokio::spawn(two.acquire(ticket("a", 1), None));
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (1, 1)).await;
    let other = within(two.acquire(ticket("b", 9), None)).await.unwrap();
    assert!(!second.is_finished(), "agent a waits for its own permit");
    drop(first);
    let second = within(second).await.unwrap().unwrap();
    drop((second, other));
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_the_queue_past_a_page_does_not_keep_others_from_a_free_permit() {
    let redis = Redis::start().await;
    let prefix = unique("flood");
    let capped = PriorityConfig {
        max_in_flight_per_agent: Some(1),
        ..config(2)
    };
    let scheduler = Scheduler::shared(
        &capped,
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let probe = state(&redis, &prefix, "probe");
    let running = within(scheduler.acquire(ticket("flood", 1), None))
        .await
        .unwrap();
    // 70 more of the same agent wait ahead (priority 1), past the 64 the
    // grant script reads at once.
    let flood: Vec<_> = (0..70)
        .map(|_| tokio::spawn(scheduler.acquire(ticket("flood", 1), None)))
        .collect();
    until_counts(&probe, (70, 1)).await;
    let other = within(scheduler.acquire(ticket("other", 9), None))
        .await
        .unwrap();
    for task in &flood {
        task.abort();
    }
    drop((running, other));
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_in_one_pool_never_wakes_a_waiter_of_another() {
    let redis = Redis::start().await;
    let prefix = unique("pools");
    let pools = PriorityConfig {
        model_capacity: [("big".to_string(), 1)].into_iter().collect(),
        ..config(1)
    };
    let scheduler = Scheduler::shared(
        &pools,
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let default = within(scheduler.acquire(ticket("a", 5), None))
        .await
        .unwrap();
    let big = within(scheduler.acquire(ticket("a", 5), Some("big")))
        .await
        .unwrap();
    // The same agent at the same priority waits in both pools.
    let waits_default = tokio::spawn(scheduler.acquire(ticket("a", 5), None));
    let waits_big = tokio::spawn(scheduler.acquire(ticket("a", 5), Some("big")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(big);
    let big = within(waits_big).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waits_default.is_finished(),
        "the default pool's permit is still held: its waiter waits"
    );
    drop(default);
    let default = within(waits_default).await.unwrap().unwrap();
    drop((big, default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_grants_another_replicas_ticket_leaves_its_permit_counted() {
    let redis = Redis::start().await;
    let prefix = unique("others");
    let one = Scheduler::shared(
        &config(1),
        state(&redis, &prefix, "one"),
        Duration::from_secs(5),
    )
    .unwrap();
    let two = Scheduler::shared(
        &config(1),
        state(&redis, &prefix, "two"),
        Duration::from_secs(5),
    )
    .unwrap();
    let probe = state(&redis, &prefix, "probe");
    let held = within(one.acquire(ticket("a", 5), None)).await.unwrap();
    let waiting = tokio::spawn(two.acquire(ticket("b", 5), None));
    until_counts(&probe, (1, 1)).await;
    // Replica one's script grants replica two's ticket.
    one.set_capacity(2);
    let granted = within(waiting).await.unwrap().unwrap();
    until_counts(&probe, (0, 2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counts(&probe).await, (0, 2), "both permits still counted");
    let third = tokio::spawn(one.acquire(ticket("c", 5), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!third.is_finished(), "a third waits: the capacity is 2");
    drop((held, granted));
    let third = within(third).await.unwrap().unwrap();
    drop(third);
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_every_pools_running_permits_count_again() {
    let redis = Redis::start().await;
    let prefix = unique("flushed");
    let pools = PriorityConfig {
        model_capacity: [("big".to_string(), 1)].into_iter().collect(),
        ..config(1)
    };
    let scheduler = Scheduler::shared(
        &pools,
        state(&redis, &prefix, "one"),
        Duration::from_secs(1),
    )
    .unwrap();
    let default = within(scheduler.acquire(ticket("a", 5), None))
        .await
        .unwrap();
    let big = within(scheduler.acquire(ticket("a", 5), Some("big")))
        .await
        .unwrap();
    let probe = state(&redis, &prefix, "probe");
    let _: () = probe.query(&redis::cmd("FLUSHALL")).await.unwrap();
    let leases = |pool: &'static str| {
        let probe = probe.clone();
        async move {
            let mut zcard = redis::cmd("ZCARD");
            zcard.arg(probe.key(&format!("prio:{pool}:leases")));
            probe.query::<usize>(&zcard).await.unwrap()
        }
    };
    corral_e2e::eventually_async("both pools count their running permit again", || async {
        leases("*").await == 1 && leases("big:latest").await == 1
    })
    .await;
    drop((default, big));
}
