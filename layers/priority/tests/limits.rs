//! The scheduler's limits, with time paused: deadlines, cancellation,
//! capacity changed at run time, per-agent caps, model pools, reserves,
//! and permits that always come back.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use corral_core::UpstreamLoad;
use corral_priority::{DeadlineExceeded, PriorityConfig, Ticket};
use tokio_test::task::spawn;

use common::{busy, granted, hold, scheduler, scheduler_with, ticket, wait, wait_on};

/// A config of `capacity` permits for each model's pool, made on demand.
fn per_model(capacity: usize) -> PriorityConfig {
    PriorityConfig {
        capacity,
        per_model: true,
        ..PriorityConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_passes_while_waiting_leaves_at_once_with_504() {
    let (s, _running) = busy(1, "x").await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut late = spawn(s.acquire(
        Ticket {
            deadline: Some(deadline),
            ..ticket("a", 1)
        },
        None,
    ));
    assert!(late.poll().is_pending());
    assert_eq!(s.snapshot().queued_total(), 1);

    tokio::time::advance(Duration::from_millis(299)).await;
    assert!(late.poll().is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(late.is_woken(), "the deadline wakes the waiter");
    let err: DeadlineExceeded = match late.poll() {
        std::task::Poll::Ready(Err(e)) => e,
        other => panic!(
            "expected a deadline refusal, got {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    };
    assert_eq!(err.waited(), Duration::from_millis(300));
    assert_eq!(s.snapshot().queued_total(), 0);
    assert_eq!(corral_core::Refusal::status(&err), 504);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_is_refused_without_taking_a_permit() {
    let s = scheduler(1);
    let past = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_millis(5)).await;
    let result = s
        .acquire(
            Ticket {
                deadline: Some(past),
                ..ticket("a", 1)
            },
            None,
        )
        .await;
    assert!(result.is_err());
    assert_eq!(s.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_leaves_the_queue_at_once() {
    let (s, running) = busy(1, "x").await;
    let waiting = wait(&s, "gone", ticket("a", 1));
    let mut next = vec![wait(&s, "next", ticket("b", 5))];
    assert_eq!(s.snapshot().queued_total(), 2);
    drop(waiting);
    assert_eq!(s.snapshot().queued_total(), 1);
    assert_eq!(s.snapshot().queued_bytes, 10);
    drop(running);
    assert_eq!(granted(&mut next)[0].0, "next");
}

#[tokio::test(start_paused = true)]
async fn a_grant_never_taken_is_given_back() {
    let (s, running) = busy(1, "x").await;
    let granted_but_dropped = wait(&s, "a", ticket("a", 1));
    let mut after = vec![wait(&s, "b", ticket("b", 5))];
    drop(running); // grants "a", which is never polled again
    assert_eq!(s.snapshot().in_flight, 1);
    assert!(granted(&mut after).is_empty(), "b still waits");
    drop(granted_but_dropped);
    let b = granted(&mut after);
    assert_eq!(b[0].0, "b", "the permit went on to b");
    assert_eq!(s.snapshot().in_flight, 1);
    drop(b);
    assert_eq!(s.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn capacity_is_a_value_that_can_change_at_run_time() {
    let (s, _running) = busy(1, "x").await;
    let mut waiting = vec![wait(&s, "a", ticket("a", 5)), wait(&s, "b", ticket("b", 5))];
    s.set_capacity(3);
    let both = granted(&mut waiting);
    assert_eq!(both.len(), 2);
    assert_eq!(s.snapshot().in_flight, 3);
    assert_eq!(s.snapshot().capacity, 3);
}

#[tokio::test(start_paused = true)]
async fn one_agent_may_be_capped_below_the_pool() {
    let s = scheduler_with(PriorityConfig {
        capacity: 4,
        max_in_flight_per_agent: Some(2),
        ..PriorityConfig::default()
    });
    let _a1 = hold(&s, "a", 5).await;
    let _a2 = hold(&s, "a", 5).await;
    let mut waiting = vec![wait(&s, "a3", ticket("a", 1))];
    let b = s.acquire(ticket("b", 9), None).await;
    assert!(b.is_ok(), "b runs though a asked with a higher priority");
    assert!(granted(&mut waiting).is_empty());
    assert_eq!(s.snapshot().in_flight, 3);
}

#[tokio::test(start_paused = true)]
async fn a_model_with_its_own_capacity_has_its_own_pool() {
    let s = scheduler_with(PriorityConfig {
        capacity: 1,
        model_capacity: [("llama3:70b".to_string(), 1)].into(),
        ..PriorityConfig::default()
    });
    let _small = s.acquire(ticket("a", 5), Some("tinyllama")).await.unwrap();
    let big = s.acquire(ticket("b", 5), Some("llama3:70b")).await;
    assert!(big.is_ok(), "the big model's pool is separate");
    assert_eq!(s.snapshot().capacity, 2);
    assert_eq!(s.snapshot_for(Some("llama3:70b")).in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn with_per_model_each_model_gets_a_pool_of_the_capacity_when_first_asked_for() {
    let s = scheduler_with(PriorityConfig {
        model_capacity: [("llama3:70b".to_string(), 2)].into(),
        ..per_model(1)
    });
    assert_eq!(s.snapshot().capacity, 3, "the default pool and the 70b's");
    let _llama = s.acquire(ticket("a", 5), Some("llama3")).await.unwrap();
    let _tiny = s.acquire(ticket("b", 5), Some("tinyllama")).await.unwrap();
    assert_eq!(
        s.snapshot().capacity,
        4,
        "a pool of 1 for each model seen, the idle default's no more"
    );
    // `llama3` and `llama3:latest` are one model: one permit between them.
    let mut waiting = vec![wait_on(
        &s,
        "second llama3",
        ticket("c", 5),
        Some("llama3:latest"),
    )];
    assert_eq!(s.snapshot_for(Some("llama3")).queued_total(), 1);
    // Capacity set at run time reaches the pools made on demand.
    s.set_capacity(2);
    let names = |g: Vec<(String, corral_priority::Permit)>| -> Vec<String> {
        g.into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(names(granted(&mut waiting)), ["second llama3"]);
    assert_eq!(s.snapshot_for(Some("tinyllama")).capacity, 2);
    assert_eq!(s.snapshot_for(Some("llama3:70b")).capacity, 2);
    let names: Vec<String> = s.pools().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"llama3:latest".to_string()), "{names:?}");
}

#[tokio::test(start_paused = true)]
async fn pools_made_on_demand_are_bounded_and_more_models_share_the_default() {
    let s = scheduler_with(per_model(1));
    let mut held = Vec::new();
    for i in 0..corral_priority::MAX_MODEL_POOLS {
        held.push(
            s.acquire(ticket("a", 5), Some(&format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    assert_eq!(s.pools().len(), corral_priority::MAX_MODEL_POOLS + 1);
    let first_extra = s.acquire(ticket("a", 5), Some("one-more")).await.unwrap();
    // Both share the default pool of one until a pool has been idle long
    // enough to make room.
    let mut second_extra = vec![wait_on(&s, "another", ticket("b", 5), Some("and-another"))];
    assert_eq!(s.pools().len(), corral_priority::MAX_MODEL_POOLS + 1);
    drop(first_extra);
    assert_eq!(granted(&mut second_extra).len(), 1);

    // Idle long enough, a pool made for a name nobody uses any more
    // gives its place to a new model.
    drop(held.pop());
    tokio::time::advance(corral_priority::IDLE_BEFORE_EVICTION).await;
    let _new = s.acquire(ticket("c", 5), Some("real-model")).await.unwrap();
    let names: Vec<String> = s.pools().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"real-model:latest".to_string()),
        "{names:?}"
    );
    assert_eq!(s.pools().len(), corral_priority::MAX_MODEL_POOLS + 1);
}

#[tokio::test(start_paused = true)]
async fn per_model_reads_make_no_pool_and_the_idle_default_pool_adds_no_capacity() {
    let s = scheduler_with(per_model(2));
    assert_eq!(s.snapshot_for(Some("ghost")).capacity, 2, "the default's");
    assert_eq!(s.counter("a", Some("ghost")), None);
    assert_eq!(s.pools().len(), 1, "reading made no pool");
    let _running = s.acquire(ticket("a", 5), Some("llama3")).await.unwrap();
    // The load is the models' pools: 1 of 2, not 1 of 4.
    assert_eq!(s.snapshot().capacity, 2);
    assert_eq!(s.snapshot().in_flight, 1);

    // A model's capacity set on its own stays when all are changed.
    assert!(s.set_model_capacity("llama3", 5));
    s.set_capacity(3);
    assert_eq!(s.snapshot_for(Some("llama3")).capacity, 5);
    let _tiny = s.acquire(ticket("b", 5), Some("tinyllama")).await.unwrap();
    assert_eq!(s.snapshot_for(Some("tinyllama")).capacity, 3);
}

#[tokio::test(start_paused = true)]
async fn reserved_permits_wait_free_for_high_priorities_only() {
    let s = scheduler_with(PriorityConfig {
        capacity: 3,
        aging: Duration::from_secs(1),
        // The strict reserve (nothing lent): lending is in `lending.rs`.
        reserve: Some(corral_priority::Reserve {
            lend_within: Duration::ZERO,
            ..corral_priority::Reserve::new(1, 2)
        }),
        ..PriorityConfig::default()
    });
    let batch1 = hold(&s, "b1", 9).await;
    let _batch2 = hold(&s, "b2", 9).await;
    // The last permit is held back: batch waits with one free...
    let mut waiting = vec![wait(&s, "batch3", ticket("b3", 9))];
    assert_eq!(s.snapshot().in_flight, 2);
    // ...even once aging has lifted it to priority 1: the reserve goes by
    // the priority asked for.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(granted(&mut waiting).is_empty());
    // Priority 2 takes the reserved permit at once.
    let urgent = hold(&s, "u", 2).await;
    assert_eq!(s.snapshot().in_flight, 3);
    // With everything taken, the next free permit goes by effective
    // priority as usual: the aged batch request before a fresh priority 3.
    waiting.push(wait(&s, "opus", ticket("o", 3)));
    drop(urgent);
    // The free permit is the reserved one again: neither may take it.
    assert!(granted(&mut waiting).is_empty());
    drop(batch1);
    let next = granted(&mut waiting);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, "batch3");
}

#[test]
fn a_reserve_holds_back_at_least_one_permit_and_asks_a_real_priority() {
    let config = |permits, capacity| PriorityConfig {
        capacity,
        reserve: Some(corral_priority::Reserve::new(permits, 2)),
        ..PriorityConfig::default()
    };
    assert!(config(1, 2).validate().is_ok());
    // More than the pool has is clamped at run time (see below), so a
    // file written for capacity 4 still starts with `--capacity 1`.
    assert!(config(4, 1).validate().is_ok());
    assert_eq!(
        config(0, 4).validate().unwrap_err().key(),
        "reserve.permits"
    );
    let mut bad_priority = config(1, 4);
    bad_priority.reserve.as_mut().unwrap().up_to_priority = 11;
    assert_eq!(
        bad_priority.validate().unwrap_err().key(),
        "reserve.up_to_priority"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_smaller_than_the_reserve_keeps_one_permit_for_everyone() {
    let s = scheduler_with(PriorityConfig {
        capacity: 4,
        model_capacity: [("llama3:70b".to_string(), 1)].into(),
        reserve: Some(corral_priority::Reserve::new(2, 1)),
        ..PriorityConfig::default()
    });
    let big = s.acquire(ticket("b", 9), Some("llama3:70b")).await;
    assert!(big.is_ok(), "a one-permit pool reserves nothing");
    // The default pool of 4 holds back 2 of them.
    let _low1 = hold(&s, "l1", 9).await;
    let _low2 = hold(&s, "l2", 9).await;
    let mut waiting = vec![wait(&s, "low3", ticket("l3", 9))];
    let _urgent = hold(&s, "u", 1).await;
    assert!(granted(&mut waiting).is_empty());
}
