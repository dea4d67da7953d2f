//! Lending the reserve, with time paused: a reserved permit goes to a
//! lower priority predicted to give it back within `lend_within` while
//! no urgent request waits, and the next permit that frees goes to an
//! urgent arrival.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use corral_core::UpstreamLoad;
use corral_priority::{Permit, PriorityConfig, Reserve, Scheduler, Ticket};
use tokio_test::task::spawn;

use common::{costing, granted, hold, scheduler_with, ticket, wait, Waiting};

/// `capacity` permits, the last one held back for priority 1, lent
/// within `lend_within_ms`.
fn lending(capacity: usize, lend_within_ms: u64) -> Arc<Scheduler> {
    scheduler_with(PriorityConfig {
        capacity,
        reserve: Some(Reserve {
            lend_within: Duration::from_millis(lend_within_ms),
            ..Reserve::new(1, 1)
        }),
        ..PriorityConfig::default()
    })
}

/// Teaches the pool that `agent`'s requests of cost 100 hold a permit
/// for `held`.
async fn learn(s: &Scheduler, agent: &str, held: Duration) {
    let permit = s.acquire(ticket(agent, 5), None).await.unwrap();
    tokio::time::advance(held).await;
    drop(permit);
}

/// Lessons: "short" holds a permit for 40 ms.
const SHORT: &[(&str, Duration)] = &[("short", Duration::from_millis(40))];

/// Lessons: "slow" holds a permit for 2 s, "short" for 40 ms.
const SLOW_AND_SHORT: &[(&str, Duration)] = &[
    ("slow", Duration::from_secs(2)),
    ("short", Duration::from_millis(40)),
];

/// [`lending`]`(2, 250)` taught each of `lessons` (an agent, and how
/// long its requests hold a permit), with one permit held by "other": the
/// scheduler and that permit.
async fn taught(lessons: &[(&str, Duration)]) -> (Arc<Scheduler>, Permit) {
    let s = lending(2, 250);
    for (agent, held) in lessons {
        learn(&s, agent, *held).await;
    }
    let running = hold(&s, "other", 5).await;
    (s, running)
}

/// Whether `ticket` is granted at once.
fn granted_at_once(s: &Scheduler, ticket: Ticket) -> Option<Permit> {
    let mut task = spawn(s.acquire(ticket, None));
    match task.poll() {
        std::task::Poll::Ready(Ok(permit)) => Some(permit),
        std::task::Poll::Ready(Err(e)) => panic!("refused: {e}"),
        std::task::Poll::Pending => None,
    }
}

/// [`taught`]`(SHORT)` with the reserve lent to "short": the scheduler,
/// the permit "other" holds and the lent one.
async fn lent_to_short() -> (Arc<Scheduler>, Permit, Permit) {
    let (s, running) = taught(SHORT).await;
    let lent = granted_at_once(&s, ticket("short", 5)).unwrap();
    (s, running, lent)
}

/// The names of the waiting requests granted now, and their permits.
fn names(waiting: &mut Vec<Waiting>) -> (Vec<String>, Vec<Permit>) {
    granted(waiting).into_iter().unzip()
}

#[tokio::test(start_paused = true)]
async fn a_short_request_is_lent_the_reserve_while_no_urgent_one_waits() {
    let (s, _running) = taught(SHORT).await;
    // Only the reserved permit is free: predicted 40 ms, it is lent.
    let lent = granted_at_once(&s, ticket("short", 5));
    assert!(lent.is_some(), "a short request borrows the reserve");
    assert_eq!(s.snapshot().in_flight, 2);
    assert_eq!(s.reserve_lent(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_predicted_long_is_not_lent_the_reserve() {
    let (s, _running) = taught(SLOW_AND_SHORT).await;
    // The slow agent's generations take 2 s...
    assert!(granted_at_once(&s, ticket("slow", 5)).is_none());
    // ...and a short agent asking for ten times its usual work is
    // predicted ten times longer (400 ms).
    let big = costing("short", 1000.0);
    assert!(granted_at_once(&s, big).is_none());
    assert_eq!(s.snapshot().in_flight, 1);
    assert_eq!(s.reserve_lent(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_short_request_behind_one_predicted_long_borrows_the_reserve() {
    let (s, running) = taught(SLOW_AND_SHORT).await;
    let mut waiting = vec![wait(&s, "slow", ticket("slow", 5))];
    let lent = granted_at_once(&s, ticket("short", 5)).unwrap();
    // The slow request waits for a permit of its own, as it would have:
    // the reserve is counted, not named, so the one that frees first is
    // held back now.
    assert!(names(&mut waiting).0.is_empty());
    drop(running);
    assert!(names(&mut waiting).0.is_empty());
    drop(lent);
    assert_eq!(names(&mut waiting).0, ["slow"]);
}

#[tokio::test(start_paused = true)]
async fn an_urgent_arrival_gets_the_next_permit_that_frees_not_a_lower_priority_waiter() {
    let s = lending(3, 250);
    learn(&s, "short", Duration::from_millis(40)).await;
    let a = hold(&s, "a", 5).await;
    let _b = hold(&s, "b", 5).await;
    let lent = granted_at_once(&s, ticket("short", 5)).unwrap();
    let mut waiting = vec![wait(&s, "low", ticket("low", 5))];
    tokio::time::advance(Duration::from_millis(10)).await;
    waiting.push(wait(&s, "urgent", ticket("urgent", 1)));
    // Not the lent permit but another frees first: still the urgent
    // request's, though the lower one asked before.
    drop(a);
    let (first, _urgent) = names(&mut waiting);
    assert_eq!(first, ["urgent"]);
    // The lent permit comes back with no urgent request waiting: lent
    // again, to the lower one (no history: the pool's average, ~30 ms).
    drop(lent);
    assert_eq!(names(&mut waiting).0, ["low"]);
    assert_eq!(s.reserve_lent(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_lend_within_zero_the_reserve_stays_strict() {
    let s = lending(2, 0);
    learn(&s, "short", Duration::from_millis(1)).await;
    let _running = hold(&s, "other", 5).await;
    let mut waiting = vec![wait(&s, "short", ticket("short", 5))];
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(names(&mut waiting).0.is_empty());
    // The reserved permit waits free for priority 1.
    assert!(granted_at_once(&s, ticket("urgent", 1)).is_some());
    assert_eq!(s.reserve_lent(), 0);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_lent_before_the_pool_has_had_a_permit_back() {
    let (s, _running) = taught(&[]).await;
    assert!(granted_at_once(&s, ticket("fresh", 5)).is_none());
    assert_eq!(s.snapshot().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn an_agent_without_history_borrows_by_the_pools_average_hold() {
    let (short, _running) = taught(&[("someone", Duration::from_millis(40))]).await;
    assert!(granted_at_once(&short, ticket("fresh", 5)).is_some());

    let (long, _running) = taught(&[("someone", Duration::from_secs(1))]).await;
    assert!(granted_at_once(&long, ticket("fresh", 5)).is_none());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_lent_while_a_request_the_reserve_is_for_waits_at_its_agents_cap() {
    let s = scheduler_with(PriorityConfig {
        capacity: 3,
        max_in_flight_per_agent: Some(1),
        reserve: Some(Reserve::new(1, 1)),
        ..PriorityConfig::default()
    });
    learn(&s, "short", Duration::from_millis(40)).await;
    let first = hold(&s, "urgent", 1).await;
    let _other = hold(&s, "other", 5).await;
    // The urgent agent's second request waits for its first to end: the
    // reserved permit is kept for it.
    let mut waiting = vec![wait(&s, "urgent-2", ticket("urgent", 1))];
    waiting.push(wait(&s, "short", ticket("short", 5)));
    assert_eq!(s.snapshot().in_flight, 2);
    assert_eq!(s.reserve_lent(), 0);
    // Once it runs, nobody the reserve is for waits: the short request
    // borrows it.
    drop(first);
    assert_eq!(names(&mut waiting).0, ["urgent-2", "short"]);
    assert_eq!(s.reserve_lent(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lent_permit_given_back_as_an_urgent_arrives_and_a_waiter_leaves_goes_to_the_urgent() {
    let (s, running, lent) = lent_to_short().await;
    let leaving = wait(&s, "leaving", ticket("c", 5));
    let mut waiting = vec![wait(&s, "low", ticket("d", 5))];
    waiting.push(wait(&s, "urgent", ticket("u", 1)));
    // All at once, before anyone is polled again: the lent permit comes
    // back and a lower waiter leaves.
    drop(lent);
    drop(leaving);
    let (first, _urgent) = names(&mut waiting);
    assert_eq!(first, ["urgent"]);
    assert_eq!(s.snapshot().in_flight, 2);
    assert_eq!(s.snapshot().queued_total(), 1);
    drop(running);
    assert_eq!(names(&mut waiting).0, ["low"]);
}

#[tokio::test(start_paused = true)]
async fn an_urgent_grant_never_taken_is_lent_on_to_a_short_waiter() {
    let (s, _running, lent) = lent_to_short().await;
    let urgent = wait(&s, "urgent", ticket("u", 1));
    let mut waiting = vec![wait(&s, "low", ticket("short", 5))];
    drop(lent); // granted to the urgent request, which leaves untaken
    assert!(names(&mut waiting).0.is_empty());
    drop(urgent);
    let (next, _low) = names(&mut waiting);
    assert_eq!(next, ["low"]);
    assert_eq!(s.snapshot().in_flight, 2);
    assert_eq!(s.reserve_lent(), 2);
}

#[test]
fn lend_within_is_read_bounded_and_defaults_to_lending() {
    let parse = |text: &str| toml::from_str::<PriorityConfig>(text).unwrap();
    let default = parse("reserve = { permits = 1, up_to_priority = 2 }");
    assert_eq!(
        default.reserve.unwrap().lend_within,
        corral_priority::DEFAULT_LEND_WITHIN
    );
    let strict = parse(r#"reserve = { permits = 1, up_to_priority = 2, lend_within = "0s" }"#);
    assert!(strict.validate().is_ok());
    assert!(strict.reserve.unwrap().lend_within.is_zero());
    let long = parse(r#"reserve = { permits = 1, up_to_priority = 2, lend_within = "2m" }"#);
    assert_eq!(long.validate().unwrap_err().key(), "reserve.lend_within");
    assert!(toml::from_str::<PriorityConfig>(
        r#"reserve = { permits = 1, up_to_priority = 2, lend_within = "soon" }"#
    )
    .is_err());
}
