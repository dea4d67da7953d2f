//! What the scheduler's tests share: schedulers, tickets, and waiting
//! requests polled by hand.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;

use corral_core::Priority;
use corral_priority::{Acquire, Permit, PriorityConfig, Scheduler, Ticket};
use tokio_test::task::{spawn, Spawn};

/// A scheduler of `capacity` permits, the rest of its config the default.
pub(crate) fn scheduler(capacity: usize) -> Arc<Scheduler> {
    scheduler_with(PriorityConfig {
        capacity,
        ..PriorityConfig::default()
    })
}

/// A scheduler of `config`.
pub(crate) fn scheduler_with(config: PriorityConfig) -> Arc<Scheduler> {
    Scheduler::new(&config).unwrap()
}

/// A ticket of `agent` at `priority`: weight 1, cost 100, 10 bytes.
pub(crate) fn ticket(agent: &str, priority: u8) -> Ticket {
    Ticket {
        agent: agent.into(),
        priority: Priority::new(priority).unwrap(),
        weight: 1.0,
        cost: 100.0,
        bytes: 10,
        deadline: None,
    }
}

/// A ticket of `agent` at priority 5 for work of `cost`.
pub(crate) fn costing(agent: &str, cost: f64) -> Ticket {
    Ticket {
        cost,
        ..ticket(agent, 5)
    }
}

/// Takes a permit for `agent` at `priority`, which must be granted.
pub(crate) async fn hold(scheduler: &Scheduler, agent: &str, priority: u8) -> Permit {
    scheduler
        .acquire(ticket(agent, priority), None)
        .await
        .unwrap()
}

/// A scheduler of `capacity` permits, one of them held by `agent`: the
/// scheduler and that permit.
pub(crate) async fn busy(capacity: usize, agent: &str) -> (Arc<Scheduler>, Permit) {
    let s = scheduler(capacity);
    let running = hold(&s, agent, 5).await;
    (s, running)
}

/// A waiting request, polled by hand.
pub(crate) struct Waiting {
    pub(crate) name: String,
    pub(crate) task: Spawn<Acquire>,
}

/// A request of `ticket`, named `name`, that must wait.
pub(crate) fn wait(scheduler: &Scheduler, name: &str, ticket: Ticket) -> Waiting {
    wait_on(scheduler, name, ticket, None)
}

/// A request for `model` that must wait.
pub(crate) fn wait_on(
    scheduler: &Scheduler,
    name: &str,
    ticket: Ticket,
    model: Option<&str>,
) -> Waiting {
    let mut task = spawn(scheduler.acquire(ticket, model));
    assert!(task.poll().is_pending(), "{name} should wait");
    Waiting {
        name: name.to_string(),
        task,
    }
}

/// Polls every waiting request; the names of those granted, in the
/// order given, with their permits.
pub(crate) fn granted(waiting: &mut Vec<Waiting>) -> Vec<(String, Permit)> {
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
pub(crate) fn serve_in_order(
    mut running: Permit,
    waiting: &mut Vec<Waiting>,
    n: usize,
) -> Vec<String> {
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
