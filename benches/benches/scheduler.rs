//! The scheduler's cost per request with 10,000 requests queued: one
//! arrival, one completion, and the grant it triggers, with the queue
//! held at 10,000 waiting tickets. Fair share looks at the head of each
//! waiting agent's queue, so the cost depends on how many agents wait:
//! the fleet of the design (131 agents) and a worst case where every
//! waiting request is a different agent. And an arrival's estimate of
//! its place and wait, with that queue; and the arrival path since the
//! waiting room (estimate and reservations) with 1,000 booked.

#![allow(missing_docs)] // criterion_group! makes an undocumented pub fn.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use corral_core::{Priority, RequestId, UpstreamLoad};
use corral_priority::{Acquire, Permit, PriorityConfig, Scheduler, Ticket};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const QUEUED: usize = 10_000;

fn ticket(n: usize, agents: usize) -> Ticket {
    Ticket {
        agent: format!("agent-{}", n % agents).into(),
        priority: Priority::new((n % 10) as u8 + 1).expect("1..=10"),
        weight: 1.0,
        cost: 300.0,
        bytes: 256,
        deadline: None,
    }
}

/// Records which ticket was woken, so the bench polls only the granted
/// one instead of searching 10,000.
struct Woken {
    id: usize,
    list: Arc<Mutex<Vec<usize>>>,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.list.lock().expect("lock").push(self.id);
    }
}

fn poll(acquire: &mut Acquire, waker: &Waker) -> Option<Permit> {
    let mut cx = Context::from_waker(waker);
    match Pin::new(acquire).poll(&mut cx) {
        Poll::Ready(result) => result.ok(),
        Poll::Pending => None,
    }
}

fn scheduler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("scheduler_10000_queued");
    for agents in [131usize, QUEUED] {
        let s = Scheduler::new(&PriorityConfig {
            capacity: 1,
            ..PriorityConfig::default()
        })
        .expect("config");
        let woken = Arc::new(Mutex::new(Vec::new()));
        let waker = |id: usize| {
            Waker::from(Arc::new(Woken {
                id,
                list: woken.clone(),
            }))
        };
        let mut running = Some(
            poll(&mut s.acquire(ticket(0, agents), None), &waker(0)).expect("granted at once"),
        );
        let mut waiting: HashMap<usize, Acquire> = HashMap::with_capacity(QUEUED + 1);
        for n in 1..=QUEUED {
            let mut acquire = s.acquire(ticket(n, agents), None);
            assert!(poll(&mut acquire, &waker(n)).is_none());
            waiting.insert(n, acquire);
        }
        assert_eq!(s.snapshot().queued_total(), QUEUED);
        let mut n = QUEUED;
        group.bench_with_input(
            BenchmarkId::new("arrive_complete_grant", format!("{agents}_agents")),
            &agents,
            |b, &agents| {
                b.iter(|| {
                    n += 1;
                    let mut acquire = s.acquire(ticket(n, agents), None);
                    let _ = poll(&mut acquire, &waker(n));
                    waiting.insert(n, acquire);
                    drop(running.take());
                    let granted = woken
                        .lock()
                        .expect("lock")
                        .pop()
                        .expect("someone was granted");
                    let mut acquire = waiting.remove(&granted).expect("waiting");
                    running = Some(poll(&mut acquire, &waker(granted)).expect("its permit"));
                });
            },
        );
        assert_eq!(s.snapshot().queued_total(), QUEUED);
        // What every arrival also asks since estimates came (its place and
        // wait, for its headers and deadline): with the queue full.
        group.bench_with_input(
            BenchmarkId::new("estimate", format!("{agents}_agents")),
            &agents,
            |b, _| {
                let arriving = ticket(usize::MAX / 2, agents);
                b.iter(|| s.estimate(&arriving, None));
            },
        );
        // The arrival path since the waiting room: the estimate, the
        // arrival's reservation looked up and the reservations due before
        // it walked, with 1,000 reservations booked (a few permits given
        // back first, so holds are measured and waits known).
        for _ in 0..3 {
            drop(running.take());
            let granted = woken.lock().expect("lock").pop().expect("granted");
            let mut acquire = waiting.remove(&granted).expect("waiting");
            running = Some(poll(&mut acquire, &waker(granted)).expect("its permit"));
        }
        for n in 0..1_000 {
            let mut refused = ticket(n, agents);
            refused.priority = Priority::new(1).expect("1..=10");
            refused.deadline = Some(tokio::time::Instant::now());
            let id = RequestId::from(format!("booked-{n}"));
            let _ = s.admit(&refused, None, Some(&id));
        }
        assert!(s.reservations() > 0, "the room holds reservations");
        group.bench_with_input(
            BenchmarkId::new("admit_1000_reserved", format!("{agents}_agents")),
            &agents,
            |b, _| {
                let arriving = ticket(usize::MAX / 2, agents);
                let id = RequestId::from("arriving");
                b.iter(|| s.admit(&arriving, None, Some(&id)));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
