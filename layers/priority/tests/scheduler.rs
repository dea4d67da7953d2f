//! The order of service, with time paused: priority, fair share, weights,
//! aging, and ties. Limits (deadlines, cancellation, capacity, caps,
//! pools, reserves) are in `limits.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use corral_core::UpstreamLoad;
use corral_priority::{Permit, PriorityConfig, Scheduler, Ticket};

use common::{
    busy, costing, granted, hold, scheduler, scheduler_with, serve_in_order, ticket, wait, Waiting,
};

/// `n` rounds of waiting requests, one of each of `tickets` a round, each
/// named by its agent and round.
fn rounds(s: &Scheduler, n: usize, tickets: &[Ticket]) -> Vec<Waiting> {
    let mut waiting = Vec::new();
    for i in 0..n {
        for ticket in tickets {
            let name = format!("{}{i}", ticket.agent);
            waiting.push(wait(s, &name, ticket.clone()));
        }
    }
    waiting
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_served_by_priority() {
    let (s, running) = busy(1, "x").await;
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
    let (s, running) = busy(1, "chatty").await;
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
    let (s, running) = busy(1, "a").await;
    let mut waiting = rounds(&s, 10, &[ticket("a", 5), ticket("b", 5), ticket("c", 5)]);
    let order = serve_in_order(running, &mut waiting, 12);
    for agent in ["a", "b", "c"] {
        let served = order.iter().filter(|n| n.starts_with(agent)).count();
        assert_eq!(served, 4, "{agent} in {order:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_class_of_weight_two_gets_twice_the_service() {
    let (s, running) = busy(1, "light").await;
    let heavy = Ticket {
        weight: 2.0,
        ..ticket("heavy", 5)
    };
    let mut waiting = rounds(&s, 20, &[heavy, ticket("light", 5)]);
    let order = serve_in_order(running, &mut waiting, 15);
    let heavy = order.iter().filter(|n| n.starts_with("heavy")).count();
    assert!((9..=11).contains(&heavy), "about 10 of 15: {order:?}");
}

#[tokio::test(start_paused = true)]
async fn fair_share_counts_work_not_requests() {
    let (s, running) = busy(1, "x").await;
    // One agent asks for long generations, the other for short ones.
    let tickets = [costing("long", 1000.0), costing("short", 100.0)];
    let mut waiting = rounds(&s, 6, &tickets);
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
    let mut running = hold(&s, "x", 1).await;
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
async fn an_agent_back_from_idle_starts_at_the_lowest_active_counter() {
    let s = scheduler(2);
    let busy = s.acquire(costing("busy", 5000.0), None).await.unwrap();
    let early = s.acquire(costing("early", 100.0), None).await.unwrap();
    drop(early); // early goes idle with a counter of 100
    let back = hold(&s, "early", 5).await;
    let counter = s.counter("early", None).unwrap();
    assert!(
        counter >= 5000.0,
        "lifted to the least active counter: {counter}"
    );
    drop((busy, back));
}

#[tokio::test(start_paused = true)]
async fn agents_equally_served_go_in_the_order_they_asked_not_by_name() {
    // Found by the 131-agent scenario: fresh agents all start at the same
    // counter, and ties went to the alphabetically first name, so
    // `system-08` waited while `system-01` and `system-06`, who asked
    // later, went first.
    let (s, running) = busy(1, "busy").await;
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

#[tokio::test(start_paused = true)]
async fn at_one_priority_and_equal_service_the_shorter_request_goes_first() {
    let (s, running) = busy(1, "x").await;
    let mut waiting = vec![wait(&s, "long", costing("a", 2000.0))];
    tokio::time::advance(Duration::from_millis(1)).await;
    waiting.push(wait(&s, "short", costing("b", 20.0)));
    let order = serve_in_order(running, &mut waiting, 2);
    assert_eq!(
        order,
        ["short", "long"],
        "shorter first, though it came second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_request_is_overtaken_by_short_ones_for_one_aging_period_at_most() {
    let s = common::scheduler_with(PriorityConfig {
        capacity: 1,
        aging: Duration::from_secs(10),
        ..PriorityConfig::default()
    });
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
    let waiting = long_then_shorts(&s).await;
    let long = served_at(running, waiting, "long").await;
    // Short ones first while it is younger than the aging period (10 s,
    // a request a second), then it goes.
    assert!((8..=11).contains(&long), "served {long}th");
}

#[tokio::test(start_paused = true)]
async fn an_agent_at_its_cap_does_not_keep_a_long_request_overtaken_past_the_aging_period() {
    let s = common::scheduler_with(PriorityConfig {
        capacity: 2,
        aging: Duration::from_secs(10),
        max_in_flight_per_agent: Some(1),
        ..PriorityConfig::default()
    });
    // Agent c runs one and has the oldest request waiting: at its cap.
    let _c_running = s.acquire(ticket("c", 5), None).await.unwrap();
    let running = s.acquire(ticket("x", 5), None).await.unwrap();
    let _c_waiting = wait(&s, "c-next", ticket("c", 5));
    tokio::time::advance(Duration::from_millis(1)).await;
    let waiting = long_then_shorts(&s).await;
    let long = served_at(running, waiting, "long").await;
    assert!(long <= 11, "served {long}th");
}

/// A long request, then 30 short ones, a millisecond apart.
async fn long_then_shorts(s: &Scheduler) -> Vec<Waiting> {
    let mut waiting = vec![wait(s, "long", costing("long", 5000.0))];
    for i in 0..30 {
        tokio::time::advance(Duration::from_millis(1)).await;
        let name = format!("short-{i}");
        waiting.push(wait(s, &name, costing(&name, 20.0)));
    }
    waiting
}

/// Serves `waiting` one at a time behind `running`, each holding the
/// permit 1 s: where `name` came in the order of service.
async fn served_at(mut running: Permit, mut waiting: Vec<Waiting>, name: &str) -> usize {
    let mut order = Vec::new();
    while !waiting.is_empty() {
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(running);
        let mut next = granted(&mut waiting);
        assert_eq!(next.len(), 1, "one granted per free permit");
        let (served, permit) = next.pop().unwrap();
        order.push(served);
        running = permit;
    }
    order.iter().position(|n| n == name).unwrap()
}
