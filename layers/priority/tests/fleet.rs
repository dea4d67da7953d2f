//! One queue over several upstreams: where permits are granted, grouping
//! by model when each server holds one, draining for urgent work,
//! failover, and permits given back on every path.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::Priority;
use corral_fleet::{Fleet, UpstreamSpec};
use corral_priority::{Acquire, Permit, PriorityConfig, Scheduler, Ticket};

fn ticket(agent: &str, priority: u8) -> Ticket {
    Ticket {
        agent: agent.into(),
        priority: Priority::new(priority).unwrap(),
        weight: 1.0,
        cost: 10.0,
        bytes: 0,
        deadline: None,
    }
}

/// Two servers, each running `capacity` requests of one loaded model.
fn two_single_model_servers(capacity: usize) -> (Arc<Fleet>, Arc<Scheduler>) {
    let fleet = Fleet::new(vec![
        UpstreamSpec::new("a", capacity).with_max_loaded(Some(1)),
        UpstreamSpec::new("b", capacity).with_max_loaded(Some(1)),
    ]);
    let scheduler = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    (fleet, scheduler)
}

fn poll_now(acquire: &mut Acquire) -> Option<Permit> {
    let waker = futures_task_noop();
    let mut cx = Context::from_waker(&waker);
    match std::pin::Pin::new(acquire).poll(&mut cx) {
        Poll::Ready(result) => Some(result.unwrap()),
        Poll::Pending => None,
    }
}

fn futures_task_noop() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

fn in_flight(fleet: &Fleet) -> Vec<(String, String, usize)> {
    fleet
        .status()
        .iter()
        .flat_map(|u| {
            u.models
                .iter()
                .map(|m| (u.name.to_string(), m.model.to_string(), m.in_flight))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_model_stays_on_its_server_while_its_queue_lasts() {
    let (fleet, s) = two_single_model_servers(2);
    let a1 = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let a2 = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    assert_eq!(
        a1.upstream(),
        a2.upstream(),
        "alpha loaded once, both permits there"
    );
    let b1 = s.acquire(ticket("y", 5), Some("beta")).await.unwrap();
    assert_ne!(b1.upstream(), a1.upstream(), "beta on the other server");
    // Both servers hold a model; a third waits rather than evict a busy one.
    let mut gamma = s.acquire(ticket("z", 5), Some("gamma"));
    let mut a3 = s.acquire(ticket("x", 5), Some("alpha"));
    assert!(poll_now(&mut gamma).is_none());
    assert!(poll_now(&mut a3).is_none());
    // An alpha permit comes back: the alpha waiting takes it (no load).
    let alpha_server = a1.upstream();
    drop(a1);
    let a3 = poll_now(&mut a3).expect("granted where alpha is loaded");
    assert_eq!(a3.upstream(), alpha_server);
    assert!(poll_now(&mut gamma).is_none());
    // Beta's queue is empty: when it ends, gamma loads there.
    let beta_server = b1.upstream();
    drop(b1);
    let gamma = poll_now(&mut gamma).expect("loaded where beta was idle");
    assert_eq!(gamma.upstream(), beta_server);
    let loaded: Vec<_> = in_flight(&fleet);
    assert!(
        !loaded.iter().any(|(_, m, _)| m == "beta:latest"),
        "beta evicted: {loaded:?}"
    );
    drop((a2, a3, gamma));
    assert!(in_flight(&fleet).iter().all(|(_, _, n)| *n == 0));
}

#[tokio::test(start_paused = true)]
async fn an_urgent_model_drains_the_server_whose_work_matters_least() {
    let (fleet, s) = two_single_model_servers(1);
    let batch = s.acquire(ticket("batch", 8), Some("alpha")).await.unwrap();
    let normal = s.acquire(ticket("normal", 5), Some("beta")).await.unwrap();
    // More of both wait.
    let mut alpha_more = s.acquire(ticket("batch", 8), Some("alpha"));
    let mut beta_more = s.acquire(ticket("normal", 5), Some("beta"));
    assert!(poll_now(&mut alpha_more).is_none());
    assert!(poll_now(&mut beta_more).is_none());
    // Priority 1 for a third model: the batch server is drained for it.
    let mut urgent = s.acquire(ticket("urgent", 1), Some("gamma"));
    assert!(poll_now(&mut urgent).is_none());
    let drained = fleet
        .status()
        .into_iter()
        .position(|u| u.switching_to.as_deref() == Some("gamma:latest"))
        .expect("one server drained for gamma");
    assert_eq!(
        Some(drained),
        batch.upstream(),
        "the batch server, not the normal one"
    );
    // The batch request ends: its next one does not take the permit;
    // gamma is loaded there.
    drop(batch);
    assert!(
        poll_now(&mut alpha_more).is_none(),
        "alpha waits: its server is gamma's now"
    );
    let urgent = poll_now(&mut urgent).expect("urgent granted");
    assert_eq!(urgent.upstream(), Some(drained));
    drop((normal, urgent));
    let _ = (poll_now(&mut alpha_more), poll_now(&mut beta_more));
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_server_fails_moves_ahead_of_the_queue() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1), UpstreamSpec::new("b", 1)]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let on_a = s.acquire(ticket("x", 5), Some("m")).await.unwrap();
    let on_b = s.acquire(ticket("y", 5), Some("m")).await.unwrap();
    let mut queued = s.acquire(ticket("z", 1), Some("m"));
    assert!(poll_now(&mut queued).is_none());
    let route = on_a.route().unwrap().clone();
    let failed = route.upstream().unwrap();
    let mut moving = Box::pin(route.failover(true));
    let waker = futures_task_noop();
    assert!(moving
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert!(!fleet.is_healthy(failed));
    // The survivor's permit comes back: the moved request takes it, not
    // the priority-1 request that waited in the queue.
    drop(on_b);
    assert_eq!(
        moving.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Ready(true)
    );
    assert_ne!(route.upstream(), Some(failed));
    assert!(poll_now(&mut queued).is_none());
    drop(on_a);
    let queued = poll_now(&mut queued).expect("granted once the moved request ends");
    assert_ne!(
        queued.upstream(),
        Some(failed),
        "the failed server takes nothing"
    );
    // Back: it takes requests again. Permits held long (10 s here) come
    // back later than a load takes: it is loaded there at once.
    tokio::time::advance(std::time::Duration::from_secs(10)).await;
    drop(queued);
    let running = s.acquire(ticket("w", 5), Some("m")).await.unwrap();
    assert_ne!(
        running.upstream(),
        Some(failed),
        "where the model is loaded"
    );
    fleet.set_healthy(failed, true);
    let mut second = s.acquire(ticket("v", 5), Some("m"));
    let second = poll_now(&mut second).expect("loaded on the server back");
    assert_eq!(second.upstream(), Some(failed));
}

#[tokio::test(start_paused = true)]
async fn permits_come_back_whether_granted_requests_leave_or_finish() {
    // One server may serve alpha: the second request waits for it.
    let fleet = Fleet::new(vec![
        UpstreamSpec::new("a", 1),
        UpstreamSpec::new("b", 1).with_models(["beta"]),
    ]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let running = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let mut waiting = s.acquire(ticket("x", 5), Some("alpha"));
    assert!(poll_now(&mut waiting).is_none());
    // Nowhere else to go: a failure is the request's own.
    let route = running.route().unwrap().clone();
    assert!(!route.failover(true).await);
    assert_eq!(route.upstream(), Some(0), "it keeps its permit");
    assert!(
        fleet.is_healthy(0),
        "not drained when nowhere else can serve"
    );
    drop(running);
    // Granted, never taken: dropping it gives the permit back.
    let in_flight_now: usize = in_flight(&fleet).iter().map(|(_, _, n)| n).sum();
    assert_eq!(in_flight_now, 1, "granted to the waiting request");
    drop(waiting);
    assert!(
        in_flight(&fleet).iter().all(|(_, _, n)| *n == 0),
        "{:?}",
        in_flight(&fleet)
    );

    // Two servers for alpha: a request moving that leaves.
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1), UpstreamSpec::new("b", 1)]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let mut moved = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let other = s.acquire(ticket("y", 5), Some("alpha")).await.unwrap();
    let route = moved.route().unwrap().clone();
    let mut pending = Box::pin(route.failover(true));
    let waker = futures_task_noop();
    assert!(pending
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    drop(pending); // left while moving
    drop(other);
    moved.settle(1.0);
    drop(moved);
    assert!(
        in_flight(&fleet).iter().all(|(_, _, n)| *n == 0),
        "{:?}",
        in_flight(&fleet)
    );
    // And one moved that finishes.
    fleet.set_healthy(0, true);
    fleet.set_healthy(1, true);
    let moved = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let route = moved.route().unwrap().clone();
    assert!(
        route.failover(true).await,
        "the other server is free: moved at once"
    );
    drop(moved);
    assert!(
        in_flight(&fleet).iter().all(|(_, _, n)| *n == 0),
        "{:?}",
        in_flight(&fleet)
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_holds_while_its_model_waits_however_long_the_work_runs() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1).with_max_loaded(Some(1))]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let running = s.acquire(ticket("batch", 5), Some("alpha")).await.unwrap();
    let mut more: Vec<Acquire> = (0..5)
        .map(|_| s.acquire(ticket("batch", 5), Some("alpha")))
        .collect();
    let mut urgent = s.acquire(ticket("urgent", 1), Some("beta"));
    assert!(poll_now(&mut urgent).is_none());
    // A generation of 40 s: the drain holds however long it runs.
    tokio::time::advance(std::time::Duration::from_secs(40)).await;
    assert!(poll_now(&mut urgent).is_none());
    drop(running);
    // The batch model does not get the server back while beta waits.
    assert!(
        more.iter_mut().all(|a| poll_now(a).is_none()),
        "alpha took the drained server back"
    );
    let urgent = poll_now(&mut urgent).expect("beta loaded once alpha ended");
    assert_eq!(urgent.upstream(), Some(0));
    drop(urgent);
    // Then alpha's queue has the server again.
    assert!(more.iter_mut().any(|a| poll_now(a).is_some()));
}

#[tokio::test(start_paused = true)]
async fn waiters_held_back_by_their_cap_do_not_keep_a_model_loaded() {
    let config = PriorityConfig {
        max_in_flight_per_agent: Some(1),
        ..PriorityConfig::default()
    };
    let fleet = Fleet::new(vec![
        UpstreamSpec::new("u", 1).with_max_loaded(Some(1)),
        UpstreamSpec::new("v", 1).with_max_loaded(Some(1)),
    ]);
    let s = Scheduler::with_fleet(&config, fleet.clone()).unwrap();
    // alpha loaded on both, then idle on one.
    let first = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let second = s.acquire(ticket("y", 5), Some("alpha")).await.unwrap();
    drop(second);
    // x, at its cap, queues more alpha: they cannot run now.
    let capped: Vec<Acquire> = (0..3)
        .map(|_| s.acquire(ticket("x", 5), Some("alpha")))
        .collect();
    let mut beta = s.acquire(ticket("z", 5), Some("beta"));
    let beta = poll_now(&mut beta).expect("the idle alpha is evicted for beta");
    assert_ne!(beta.upstream(), first.upstream());
    drop((first, capped));
}

#[tokio::test(start_paused = true)]
async fn a_model_no_upstream_serves_is_refused_not_queued() {
    let fleet = Fleet::new(vec![
        UpstreamSpec::new("a", 1).with_models(["alpha"]),
        UpstreamSpec::new("b", 1).with_models(["beta*"]),
    ]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let refusal = s.refusal(Some("gamma")).expect("refused");
    assert!(refusal.is::<corral_priority::ModelNotServed>(), "{refusal}");
    assert!(s.refusal(Some("alpha")).is_none());
    assert!(s.refusal(Some("beta:7b")).is_none());
    assert!(s.refusal(None).is_none(), "no model: Ollama answers");
    // A server that lists what it has serves nothing else.
    fleet.observe_available(1, vec!["beta:7b".into()]);
    assert!(s.refusal(Some("beta:13b")).is_some());
    assert!(s.refusal(Some("beta:7b")).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_moved_request_drains_no_server_and_a_reset_drains_only_when_repeated() {
    let fleet = Fleet::new(vec![
        UpstreamSpec::new("a", 1).with_max_loaded(Some(1)),
        UpstreamSpec::new("b", 1).with_max_loaded(Some(1)),
    ]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    let on_a = s.acquire(ticket("x", 5), Some("alpha")).await.unwrap();
    let on_b = s.acquire(ticket("y", 5), Some("beta")).await.unwrap();
    let route = on_a.route().unwrap().clone();
    let failed = route.upstream().unwrap();
    // A reset (not a refused connection): the request moves, the
    // server stays in.
    let mut moving = Box::pin(route.failover(false));
    let waker = futures_task_noop();
    assert!(moving
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert!(fleet.is_healthy(failed));
    assert!(
        fleet.status().iter().all(|u| u.switching_to.is_none()),
        "the moved request drains nothing: {:?}",
        fleet.status()
    );
    drop(on_b);
    assert_eq!(
        moving.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Ready(true)
    );
    assert_ne!(route.upstream(), Some(failed));
    drop(on_a);
    for _ in 1..corral_fleet::FAILURES_BEFORE_DRAINING {
        fleet.failed(failed, false);
    }
    assert!(
        !fleet.is_healthy(failed),
        "drained after failing again and again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_conversation_goes_back_to_its_server_while_it_has_a_permit_free() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 2), UpstreamSpec::new("b", 2)]);
    let s = Scheduler::with_fleet(&PriorityConfig::default(), fleet.clone()).unwrap();
    // The model loaded on both (the third request finds one full).
    let warm: Vec<_> = vec![
        s.acquire(ticket("w", 5), Some("m")).await.unwrap(),
        s.acquire(ticket("w", 5), Some("m")).await.unwrap(),
        s.acquire(ticket("w", 5), Some("m")).await.unwrap(),
    ];
    assert!(warm.iter().any(|p| p.upstream() == Some(0)));
    assert!(warm.iter().any(|p| p.upstream() == Some(1)));
    drop(warm);
    let first = s
        .acquire_in(ticket("x", 5), Some("m"), Some(7))
        .await
        .unwrap();
    let home = first.upstream();
    drop(first);
    // Others make home the busier server; the conversation returns.
    for _ in 0..4 {
        let other = s.acquire(ticket("y", 5), Some("m")).await.unwrap();
        let again = s
            .acquire_in(ticket("x", 5), Some("m"), Some(7))
            .await
            .unwrap();
        assert_eq!(again.upstream(), home, "back where its prompt is cached");
        drop((other, again));
    }
    // Its server full: the next goes elsewhere rather than wait.
    let one = s
        .acquire_in(ticket("x", 5), Some("m"), Some(7))
        .await
        .unwrap();
    let two = s
        .acquire_in(ticket("x", 5), Some("m"), Some(7))
        .await
        .unwrap();
    assert_eq!((one.upstream(), two.upstream()), (home, home));
    let three = s
        .acquire_in(ticket("x", 5), Some("m"), Some(7))
        .await
        .unwrap();
    assert_ne!(three.upstream(), home);
}
