//! The order of service, with time paused: priority, fair share, weights,
//! aging, deadlines, cancellation, and permits that always come back.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use corral_core::{Priority, UpstreamLoad};
use corral_priority::{Acquire, DeadlineExceeded, Permit, PriorityConfig, Scheduler, Ticket};
use tokio_test::task::{spawn, Spawn};

fn scheduler(capacity: usize) -> Arc<Scheduler> {
    scheduler_with(PriorityConfig {
        capacity,
        ..PriorityConfig::default()
    })
}

fn scheduler_with(config: PriorityConfig) -> Arc<Scheduler> {
    Scheduler::new(&config).unwrap()
}

fn ticket(agent: &str, priority: u8) -> Ticket {
    Ticket {
        agent: agent.into(),
        priority: Priority::new(priority).unwrap(),
        weight: 1.0,
        cost: 100.0,
        bytes: 10,
        deadline: None,
    }
}

/// A waiting request, polled by hand.
struct Waiting {
    name: String,
    task: Spawn<Acquire>,
}

fn wait(scheduler: &Scheduler, name: &str, ticket: Ticket) -> Waiting {
    let mut task = spawn(scheduler.acquire(ticket, None));
    assert!(task.poll().is_pending(), "{name} should wait");
    Waiting {
        name: name.to_string(),
        task,
    }
}

/// Polls every waiting request; the names of those granted, in the
/// order given, with their permits.
fn granted(waiting: &mut Vec<Waiting>) -> Vec<(String, Permit)> {
    let mut out = Vec::new();
    let mut still = Vec::new();
    for mut w in waiting.drain(..) {
        match w.task.poll() {
            std::task::Poll::Ready(Ok(permit)) => out.push((w.name, permit)),
            std::task::Poll::Ready(Err(e)) => panic!("{} refused: {e}", w.name),
            std::task::Poll::Pending => still.push(w),
        }
    }
    *waiting = still;
    out
}

/// Runs the queue with capacity 1: releases the running permit, sees who
/// is granted next, `n` times; the order of service.
fn serve_in_order(mut running: Permit, waiting: &mut Vec<Waiting>, n: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..n {
        drop(running);
        let mut next = granted(waiting);
        assert_eq!(next.len(), 1, "exactly one is granted per free permit");
        let (name, permit) = next.pop().unwrap();
        order.push(name);
        running = permit;
    }
    order
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_served_by_priority() {
    let s = scheduler(1);
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
    let mut waiting = vec![
        wait(&s, "batch", ticket("a", 9)),
        wait(&s, "normal", ticket("b", 5)),
        wait(&s, "urgent", ticket("c", 1)),
        wait(&s, "high", ticket("d", 2)),
    ];
    assert_eq!(s.snapshot().queued, [1, 1, 0, 0, 1, 0, 0, 0, 1, 0]);
    let order = serve_in_order(running, &mut waiting, 4);
    assert_eq!(order, ["urgent", "high", "normal", "batch"]);
}

#[tokio::test(start_paused = true)]
async fn an_agent_with_fifty_queued_does_not_starve_one_with_one() {
    let s = scheduler(1);
    let running = s.acquire(ticket("chatty", 5), None).await.unwrap();
    let mut waiting: Vec<Waiting> = (0..50)
        .map(|i| wait(&s, &format!("chatty-{i}"), ticket("chatty", 5)))
        .collect();
    waiting.push(wait(&s, "quiet", ticket("quiet", 5)));
    let order = serve_in_order(running, &mut waiting, 3);
    assert!(
        order.iter().any(|n| n == "quiet"),
        "served among the first: {order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn agents_at_one_priority_take_turns_by_service_received() {
    let s = scheduler(1);
    let running = s.acquire(ticket("a", 5), None).await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..10 {
        waiting.push(wait(&s, &format!("a{i}"), ticket("a", 5)));
        waiting.push(wait(&s, &format!("b{i}"), ticket("b", 5)));
        waiting.push(wait(&s, &format!("c{i}"), ticket("c", 5)));
    }
    let order = serve_in_order(running, &mut waiting, 12);
    for agent in ["a", "b", "c"] {
        let served = order.iter().filter(|n| n.starts_with(agent)).count();
        assert_eq!(served, 4, "{agent} in {order:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_class_of_weight_two_gets_twice_the_service() {
    let s = scheduler(1);
    let running = s.acquire(ticket("light", 5), None).await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..20 {
        waiting.push(wait(
            &s,
            &format!("heavy{i}"),
            Ticket {
                weight: 2.0,
                ..ticket("heavy", 5)
            },
        ));
        waiting.push(wait(&s, &format!("light{i}"), ticket("light", 5)));
    }
    let order = serve_in_order(running, &mut waiting, 15);
    let heavy = order.iter().filter(|n| n.starts_with("heavy")).count();
    assert!((9..=11).contains(&heavy), "about 10 of 15: {order:?}");
}

#[tokio::test(start_paused = true)]
async fn fair_share_counts_work_not_requests() {
    let s = scheduler(1);
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..6 {
        // One agent asks for long generations, the other for short ones.
        waiting.push(wait(
            &s,
            &format!("long{i}"),
            Ticket {
                cost: 1000.0,
                ..ticket("long", 5)
            },
        ));
        waiting.push(wait(
            &s,
            &format!("short{i}"),
            Ticket {
                cost: 100.0,
                ..ticket("short", 5)
            },
        ));
    }
    let order = serve_in_order(running, &mut waiting, 7);
    let short = order.iter().filter(|n| n.starts_with("short")).count();
    assert!(
        short >= 5,
        "the cheap agent is served more often: {order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_low_priority_request_ages_until_it_is_served() {
    let s = scheduler_with(PriorityConfig {
        capacity: 1,
        aging: Duration::from_secs(10),
        ..PriorityConfig::default()
    });
    let mut running = s.acquire(ticket("x", 1), None).await.unwrap();
    let mut waiting = vec![wait(&s, "old-batch", ticket("batch", 9))];
    // A steady stream of priority-1 work: without aging the batch request
    // would wait forever.
    let mut served_batch_at = None;
    for step in 0..20 {
        tokio::time::advance(Duration::from_secs(5)).await;
        waiting.push(wait(
            &s,
            &format!("urgent{step}"),
            ticket(&format!("u{step}"), 1),
        ));
        drop(running);
        let mut next = granted(&mut waiting);
        let (name, permit) = next.pop().unwrap();
        if name == "old-batch" {
            served_batch_at = Some(step);
        }
        running = permit;
    }
    // Priority 9 needs 8 steps of 10 s to reach priority 1.
    let step = served_batch_at.expect("the batch request was served");
    assert!((15..=17).contains(&step), "served at step {step}");
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_passes_while_waiting_leaves_at_once_with_504() {
    let s = scheduler(1);
    let _running = s.acquire(ticket("x", 5), None).await.unwrap();
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
    let s = scheduler(1);
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
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
    let s = scheduler(1);
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
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
    let s = scheduler(1);
    let _running = s.acquire(ticket("x", 5), None).await.unwrap();
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
    let _a1 = s.acquire(ticket("a", 5), None).await.unwrap();
    let _a2 = s.acquire(ticket("a", 5), None).await.unwrap();
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
async fn an_agent_back_from_idle_starts_at_the_lowest_active_counter() {
    let s = scheduler(2);
    let busy = s
        .acquire(
            Ticket {
                cost: 5000.0,
                ..ticket("busy", 5)
            },
            None,
        )
        .await
        .unwrap();
    let early = s
        .acquire(
            Ticket {
                cost: 100.0,
                ..ticket("early", 5)
            },
            None,
        )
        .await
        .unwrap();
    drop(early); // early goes idle with a counter of 100
    let back = s.acquire(ticket("early", 5), None).await.unwrap();
    let counter = s.counter("early", None).unwrap();
    assert!(
        counter >= 5000.0,
        "lifted to the least active counter: {counter}"
    );
    drop((busy, back));
}

#[tokio::test(start_paused = true)]
async fn reserved_permits_wait_free_for_high_priorities_only() {
    let s = scheduler_with(PriorityConfig {
        capacity: 3,
        aging: Duration::from_secs(1),
        reserve: Some(corral_priority::Reserve {
            permits: 1,
            up_to_priority: 2,
        }),
        ..PriorityConfig::default()
    });
    let batch1 = s.acquire(ticket("b1", 9), None).await.unwrap();
    let _batch2 = s.acquire(ticket("b2", 9), None).await.unwrap();
    // The last permit is held back: batch waits with one free...
    let mut waiting = vec![wait(&s, "batch3", ticket("b3", 9))];
    assert_eq!(s.snapshot().in_flight, 2);
    // ...even once aging has lifted it to priority 1: the reserve goes by
    // the priority asked for.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(granted(&mut waiting).is_empty());
    // Priority 2 takes the reserved permit at once.
    let urgent = s.acquire(ticket("u", 2), None).await.unwrap();
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
        reserve: Some(corral_priority::Reserve {
            permits,
            up_to_priority: 2,
        }),
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
        reserve: Some(corral_priority::Reserve {
            permits: 2,
            up_to_priority: 1,
        }),
        ..PriorityConfig::default()
    });
    let big = s.acquire(ticket("b", 9), Some("llama3:70b")).await;
    assert!(big.is_ok(), "a one-permit pool reserves nothing");
    // The default pool of 4 holds back 2 of them.
    let _low1 = s.acquire(ticket("l1", 9), None).await.unwrap();
    let _low2 = s.acquire(ticket("l2", 9), None).await.unwrap();
    let mut waiting = vec![wait(&s, "low3", ticket("l3", 9))];
    let _urgent = s.acquire(ticket("u", 1), None).await.unwrap();
    assert!(granted(&mut waiting).is_empty());
}

#[tokio::test(start_paused = true)]
async fn agents_equally_served_go_in_the_order_they_asked_not_by_name() {
    // Found by the 131-agent scenario: fresh agents all start at the same
    // counter, and ties went to the alphabetically first name, so
    // `system-08` waited while `system-01` and `system-06`, who asked
    // later, went first.
    let s = scheduler(1);
    let running = s.acquire(ticket("busy", 5), None).await.unwrap();
    let mut waiting = vec![wait(&s, "zeta", ticket("zeta", 1))];
    tokio::time::advance(Duration::from_millis(10)).await;
    waiting.push(wait(&s, "alpha", ticket("alpha", 1)));
    tokio::time::advance(Duration::from_millis(10)).await;
    waiting.push(wait(&s, "mid", ticket("mid", 1)));
    assert_eq!(
        serve_in_order(running, &mut waiting, 3),
        ["zeta", "alpha", "mid"]
    );
}
