//! Random arrivals, priorities, deadlines, cancellations and completions;
//! after every step: in flight never above capacity, no free permit while
//! anyone waits, every permit accounted for; at the end everyone is
//! served or refused and every permit is back.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::task::Poll;
use std::time::Duration;

use corral_core::{Priority, UpstreamLoad};
use corral_priority::{Acquire, Permit, PriorityConfig, Reserve, Scheduler, Ticket};
use proptest::prelude::*;
use tokio_test::task::{spawn, Spawn};

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        agent: u8,
        priority: u8,
        deadline_ms: Option<u64>,
        cost: u16,
    },
    Cancel(usize),
    Complete(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u8..=10, proptest::option::of(0u64..400), 1u16..2000)
            .prop_map(|(agent, priority, deadline_ms, cost)| Op::Arrive { agent, priority, deadline_ms, cost }),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => any::<usize>().prop_map(Op::Complete),
        2 => (0u64..300).prop_map(Op::Advance),
    ]
}

struct Model {
    scheduler: std::sync::Arc<Scheduler>,
    capacity: usize,
    cap: Option<usize>,
    reserve: Option<Reserve>,
    /// Waiting: agent, priority asked for, the wait.
    pending: Vec<(u8, u8, Spawn<Acquire>)>,
    held: Vec<(u8, Permit)>,
    refused: usize,
    served: usize,
}

impl Model {
    /// Polls every waiting ticket, moving the granted to `held`.
    fn settle(&mut self) {
        let mut still = Vec::new();
        for (agent, priority, mut task) in self.pending.drain(..) {
            match task.poll() {
                Poll::Ready(Ok(permit)) => {
                    self.served += 1;
                    self.held.push((agent, permit));
                }
                Poll::Ready(Err(_)) => self.refused += 1,
                Poll::Pending => still.push((agent, priority, task)),
            }
        }
        self.pending = still;
    }

    fn check(&self) {
        let load = self.scheduler.snapshot();
        assert!(
            load.in_flight <= self.capacity,
            "in flight {} > capacity {}",
            load.in_flight,
            self.capacity
        );
        assert_eq!(
            load.in_flight,
            self.held.len(),
            "every permit is accounted for"
        );
        assert_eq!(
            load.queued_total(),
            self.pending.len(),
            "every waiting ticket is queued once"
        );
        if let Some(cap) = self.cap {
            for (agent, _) in &self.held {
                let running = self.held.iter().filter(|(a, _)| a == agent).count();
                assert!(
                    running <= cap,
                    "agent {agent} runs {running}, over its cap {cap}"
                );
            }
        }
        if load.in_flight < self.capacity {
            // A permit may lie free only while everyone waiting is at
            // their agent's cap, or below the reserve's priority with
            // only reserved permits left.
            let reserved_only = self
                .reserve
                .filter(|r| load.in_flight + r.permits.min(self.capacity - 1) >= self.capacity);
            for (agent, priority, _) in &self.pending {
                if reserved_only.is_some_and(|r| *priority > r.up_to_priority) {
                    continue;
                }
                let running = self.held.iter().filter(|(a, _)| a == agent).count();
                let cap = self
                    .cap
                    .expect("without a cap, nobody waits while a permit is free");
                assert!(
                    running >= cap,
                    "agent {agent} waits with {running} running, under its cap {cap}"
                );
            }
        }
    }
}

fn run(capacity: usize, cap: Option<usize>, reserve: Option<Reserve>, aging_ms: u64, ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let scheduler = Scheduler::new(&PriorityConfig {
            capacity,
            aging: Duration::from_millis(aging_ms),
            max_in_flight_per_agent: cap,
            reserve,
            ..PriorityConfig::default()
        })
        .unwrap();
        let mut model = Model {
            scheduler,
            capacity,
            cap,
            reserve,
            pending: Vec::new(),
            held: Vec::new(),
            refused: 0,
            served: 0,
        };
        let mut arrivals = 0;
        for op in ops {
            match op {
                Op::Arrive {
                    agent,
                    priority,
                    deadline_ms,
                    cost,
                } => {
                    arrivals += 1;
                    let ticket = Ticket {
                        agent: format!("agent-{agent}").into(),
                        priority: Priority::new(priority).unwrap(),
                        weight: 1.0 + f64::from(agent % 3),
                        cost: f64::from(cost),
                        bytes: usize::from(cost),
                        deadline: deadline_ms
                            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms)),
                    };
                    let task = spawn(model.scheduler.acquire(ticket, None));
                    model.pending.push((agent, priority, task));
                }
                Op::Cancel(i) if !model.pending.is_empty() => {
                    let i = i % model.pending.len();
                    drop(model.pending.swap_remove(i));
                    arrivals -= 1;
                }
                Op::Complete(i) if !model.held.is_empty() => {
                    let i = i % model.held.len();
                    drop(model.held.swap_remove(i));
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                _ => {}
            }
            model.settle();
            model.check();
        }

        // Drain: whoever waits is served or refused, never left behind.
        let mut rounds = 0;
        while !model.pending.is_empty() {
            rounds += 1;
            assert!(rounds <= 10_000, "someone waits forever");
            if let Some(permit) = model.held.pop() {
                drop(permit);
            } else {
                tokio::time::advance(Duration::from_millis(50)).await;
            }
            model.settle();
            model.check();
        }
        assert_eq!(model.served + model.refused, arrivals);
        model.held.clear();
        let load = model.scheduler.snapshot();
        assert_eq!(
            (load.in_flight, load.queued_total(), load.queued_bytes),
            (0, 0, 0)
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn permits_are_never_leaked_overgranted_or_left_idle(
        capacity in 1usize..5,
        aging_ms in prop_oneof![Just(0u64), 10u64..500],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(capacity, None, None, aging_ms, ops);
    }

    #[test]
    fn a_reserve_only_leaves_permits_free_for_lower_priorities(
        capacity in 2usize..6,
        permits in 1usize..5,
        up_to_priority in 1u8..=10,
        lend_within_ms in prop_oneof![Just(0u64), 1u64..400, Just(60_000)],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let reserve = Reserve {
            lend_within: Duration::from_millis(lend_within_ms),
            ..Reserve::new(permits.min(capacity - 1), up_to_priority)
        };
        run(capacity, None, Some(reserve), 50, ops);
    }

    #[test]
    fn an_agent_cap_holds_and_only_it_leaves_permits_free(
        capacity in 1usize..6,
        cap in 1usize..3,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(capacity, Some(cap), None, 50, ops);
    }
}
