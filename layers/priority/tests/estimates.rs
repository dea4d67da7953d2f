//! Where a request stands and how long it will wait, with time paused:
//! its place in the order of service, and its wait from the work ahead
//! over the holds the pool measured, against the wait it really had.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{busy, costing, granted, scheduler, ticket, wait, Waiting};
use corral_core::{AgentId, Priority, RequestId, UpstreamLoad};

fn at(priority: u8) -> Priority {
    Priority::new(priority).unwrap()
}

/// Runs `n` requests of cost `cost` through one permit, each held
/// `held`: what the pool learns its holds from.
async fn teach(s: &corral_priority::Scheduler, n: usize, cost: f64, held: Duration) {
    for i in 0..n {
        let permit = s
            .acquire(costing(&format!("teacher-{i}"), cost), None)
            .await
            .unwrap();
        tokio::time::sleep(held).await;
        drop(permit);
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_stands_behind_better_priorities_and_earlier_arrivals() {
    let (s, running) = busy(1, "x").await;
    let _waiting: Vec<Waiting> = vec![
        wait(&s, "urgent", ticket("a", 1)),
        wait(&s, "normal", ticket("b", 5)),
        wait(&s, "batch", ticket("c", 9)),
    ];
    // Arriving now at 5: behind the priority 1 and the earlier 5.
    assert_eq!(s.estimate(&ticket("new", 5), None).unwrap().position, 2);
    assert_eq!(s.estimate(&ticket("new", 1), None).unwrap().position, 1);
    assert_eq!(s.estimate(&ticket("new", 10), None).unwrap().position, 3);
    // Nothing measured yet: no wait is claimed, beyond the completion
    // rate (none either).
    assert_eq!(s.estimate(&ticket("new", 5), None).unwrap().eta, None);
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn the_estimated_wait_is_the_work_ahead_and_matches_the_wait_it_had() {
    let s = scheduler(1);
    // Requests of cost 100 hold the permit 2 s.
    teach(&s, 5, 100.0, Duration::from_secs(2)).await;
    let running = s.acquire(costing("r", 100.0), None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Three ahead (2 s each), behind the running one's last second (less
    // the 3 ms the arrivals took).
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(wait(&s, &format!("w{i}"), costing(&format!("w{i}"), 100.0)));
        // Arrivals a moment apart: equal counters go by arrival.
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let estimate = s.estimate(&costing("new", 100.0), None).unwrap();
    assert_eq!(estimate.position, 3);
    let eta = estimate.eta.unwrap();
    assert_eq!(eta, Duration::from_millis(6_997));
    // Served: the running one ends after 1 s more, each after it 2 s.
    let arrived = tokio::time::Instant::now();
    let mut mine = wait(&s, "mine", costing("mine", 100.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(running);
    for _ in 0..3 {
        let mut next = granted(&mut waiting);
        assert_eq!(next.len(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(next.pop());
    }
    assert!(mine.task.poll().is_ready());
    let real = arrived.elapsed();
    let error = (real.as_secs_f64() - eta.as_secs_f64()).abs() / real.as_secs_f64();
    assert!(error <= 0.25, "estimated {eta:?}, waited {real:?}");
}

#[tokio::test(start_paused = true)]
async fn with_shorter_requests_first_a_request_waits_behind_shorter_ones_only() {
    let s = scheduler(1);
    teach(&s, 5, 100.0, Duration::from_secs(2)).await;
    let running = s.acquire(costing("r", 100.0), None).await.unwrap();
    let _long: Vec<Waiting> = (0..3)
        .map(|i| wait(&s, &format!("l{i}"), costing(&format!("l{i}"), 400.0)))
        .collect();
    // A short one goes before the three long ones, a longer one after.
    let short = s.estimate(&costing("short", 100.0), None).unwrap();
    let longer = s.estimate(&costing("longer", 800.0), None).unwrap();
    assert_eq!(short.position, 0);
    assert_eq!(longer.position, 3);
    assert!(
        short.eta.unwrap() * 4 < longer.eta.unwrap(),
        "{short:?} vs {longer:?}"
    );
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_found_by_its_id_until_it_runs() {
    let (s, running) = busy(1, "x").await;
    let _ahead = wait(&s, "ahead", ticket("a", 5));
    let mut acquire = s.acquire(ticket("b", 5), None);
    s.list(
        &mut acquire,
        RequestId::from("req-b"),
        AgentId::from("b"),
        at(5),
    );
    let mut task = tokio_test::task::spawn(acquire);
    assert!(task.poll().is_pending());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = s.waiting("req-b").unwrap();
    assert_eq!(seen.estimate.position, 1, "behind the earlier one");
    assert_eq!(seen.waited, Duration::from_secs(3));
    assert_eq!(seen.agent.as_str(), "b");
    assert!(s.waiting("req-nobody").is_none());
    // Its client leaves: it waits no more.
    drop(task);
    assert!(s.waiting("req-b").is_none());
    drop(running);
    assert_eq!(s.snapshot().queued_total(), 0, "the one ahead runs");
}

#[tokio::test(start_paused = true)]
async fn a_lower_priority_aged_past_a_request_stands_ahead_of_it() {
    let s = common::scheduler_with(corral_priority::PriorityConfig {
        capacity: 1,
        aging: Duration::from_secs(10),
        ..corral_priority::PriorityConfig::default()
    });
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
    let _old = wait(&s, "old", ticket("old", 7));
    // Two aging steps later, the priority 7 counts as a 5 that came
    // first.
    assert_eq!(s.estimate(&ticket("new", 5), None).unwrap().position, 0);
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(s.estimate(&ticket("new", 5), None).unwrap().position, 1);
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn an_agents_own_queue_and_other_agents_queues_are_ahead() {
    let (s, running) = busy(1, "x").await;
    let _batch: Vec<Waiting> = (0..50)
        .map(|i| wait(&s, &format!("b{i}"), ticket("batch", 5)))
        .collect();
    // Its 51st waits behind its own 50.
    assert!(s.estimate(&ticket("batch", 5), None).unwrap().position >= 50);
    let _tiny: Vec<Waiting> = (0..50)
        .map(|i| wait(&s, &format!("t{i}"), costing("tiny", 1.0)))
        .collect();
    // A long one from a new agent: behind the tiny ones and most of the
    // batch, not behind two agents' next requests only.
    let long = s.estimate(&costing("new", 1000.0), None).unwrap();
    assert!(long.position > 50, "{long:?}");
    drop(running);
}
