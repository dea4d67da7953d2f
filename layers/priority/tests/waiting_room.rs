//! The waiting room, with time paused: a request refused for its
//! deadline holds a reservation for when a permit will be free for it,
//! is refused with the time left if it comes back sooner, and is let in
//! ahead of fresh arrivals when it comes back then.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{costing, granted, scheduler, wait, Waiting};
use corral_core::{RequestId, UpstreamLoad};
use corral_priority::{Admitted, DeadlineUnreachable, Scheduler, Ticket};
use tokio::time::Instant;
use tokio_test::task::spawn;

/// Runs `n` requests of cost 100 through the one permit, each held 1 s:
/// the pool learns 10 ms per unit of cost.
async fn teach(s: &Scheduler, n: usize) {
    for i in 0..n {
        let permit = s
            .acquire(costing(&format!("teacher-{i}"), 100.0), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(permit);
    }
}

/// One running (just started: 1 s to go) and `queued` of 1 s each
/// waiting, on one permit.
async fn loaded(
    queued: usize,
) -> (
    std::sync::Arc<Scheduler>,
    corral_priority::Permit,
    Vec<Waiting>,
) {
    let s = scheduler(1);
    teach(&s, 5).await;
    let running = s.acquire(costing("running", 100.0), None).await.unwrap();
    let waiting = (0..queued)
        .map(|i| wait(&s, &format!("q{i}"), costing(&format!("q{i}"), 100.0)))
        .collect();
    (s, running, waiting)
}

/// A request of `agent` costing 100 with `deadline_secs` to go.
fn due_in(agent: &str, deadline_secs: u64) -> Ticket {
    Ticket {
        deadline: Some(Instant::now() + Duration::from_secs(deadline_secs)),
        ..costing(agent, 100.0)
    }
}

fn admit(s: &Scheduler, agent: &str, id: &str) -> Result<Admitted, DeadlineUnreachable> {
    s.admit(&due_in(agent, 2), None, Some(&RequestId::from(id)))
}

fn refused(result: Result<Admitted, DeadlineUnreachable>) -> DeadlineUnreachable {
    match result {
        Ok(admitted) => panic!("let in: {admitted:?}"),
        Err(refusal) => refusal,
    }
}

fn millis(d: Option<Duration>) -> u128 {
    d.unwrap().as_millis()
}

#[tokio::test(start_paused = true)]
async fn each_reservation_falls_due_behind_those_booked_before_it() {
    let (s, running, _queued) = loaded(4).await;
    // 1 s for the running one, 4 s queued: 5 s, past a 2 s deadline.
    let first = refused(admit(&s, "a", "ra"));
    assert!(first.reserved());
    assert_eq!(millis(first.estimate().eta), 5_000);
    assert_eq!(millis(first.retry_after()), 5_000);
    // Each next one behind the reservations before it, 1 s each.
    let second = refused(admit(&s, "b", "rb"));
    assert_eq!(millis(second.retry_after()), 6_000);
    assert_eq!(second.estimate().position, 5, "the 4 queued and \"a\"");
    let third = refused(admit(&s, "c", "rc"));
    assert_eq!(millis(third.retry_after()), 7_000);
    assert_eq!(s.reservations(), 3);
    // A request Corral named (no id from its client) keeps no place: it
    // is told when the work ahead is down to its deadline.
    let anonymous = refused(s.admit(&due_in("d", 2), None, None));
    assert!(!anonymous.reserved());
    assert_eq!(millis(anonymous.retry_after()), 8_000 - 2_000);
    assert_eq!(s.reservations(), 3);
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn back_early_it_is_refused_with_the_time_left() {
    let (s, running, _queued) = loaded(4).await;
    refused(admit(&s, "a", "ra"));
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let again = refused(admit(&s, "a", "ra"));
    assert!(again.reserved());
    assert_eq!(millis(again.retry_after()), 3_500);
    // Its id under another agent is not its place.
    let other = refused(admit(&s, "mallory", "ra"));
    assert!(millis(other.retry_after()) > 3_500);
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn back_early_with_the_queue_within_its_deadline_it_is_told_its_place_is_kept_not_the_queue()
{
    let (s, running, queued) = loaded(4).await;
    let first = refused(admit(&s, "a", "ra"));
    assert!(!first.early());
    assert_eq!(
        first.to_string(),
        "the request's deadline is 2000 ms away but the queue ahead of it takes about 5000 ms; \
         its place is kept for 5000 ms from now: send it again with the same X-Request-Id then"
    );
    // The queue drains meanwhile: what waits ahead of it now is within
    // its deadline, but its reservation is not due yet.
    drop(queued);
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let again = refused(admit(&s, "a", "ra"));
    let eta = again.estimate().eta.unwrap();
    assert!(eta <= Duration::from_secs(2), "the queue takes {eta:?}");
    assert!(again.reserved() && again.early());
    assert_eq!(millis(again.retry_after()), 3_500);
    assert_eq!(
        again.to_string(),
        "the request is back before its reservation is due: its place is kept for 3500 ms \
         from now: send it again with the same X-Request-Id then"
    );
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn back_on_time_it_is_let_in_ahead_of_fresh_arrivals() {
    let (s, running, mut queued) = loaded(4).await;
    refused(admit(&s, "a", "ra"));
    // Shorter requests without deadlines arrive meanwhile and queue.
    tokio::time::advance(Duration::from_secs(4)).await;
    for i in 0..3 {
        queued.push(wait(
            &s,
            &format!("short{i}"),
            costing(&format!("short{i}"), 10.0),
        ));
    }
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let admitted = admit(&s, "a", "ra").unwrap();
    assert!(admitted.reserved, "let in for its reservation");
    assert_eq!(admitted.estimate.unwrap().position, 0, "at the front");
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    assert!(mine.poll().is_pending());
    // A fresh arrival now stands behind it.
    let fresh = s.estimate(&costing("late", 1.0), None).unwrap();
    assert!(fresh.position >= 1, "{fresh:?}");
    drop(running);
    let permit = match mine.poll() {
        std::task::Poll::Ready(permit) => permit.unwrap(),
        std::task::Poll::Pending => panic!("served before the shorter fresh ones"),
    };
    assert!(granted(&mut queued).is_empty());
    drop(permit);
    assert_eq!(s.reservations(), 0, "used up");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_not_claimed_in_time_is_forgotten() {
    let (s, running, queued) = loaded(4).await;
    refused(admit(&s, "a", "ra"));
    drop(queued);
    drop(running);
    // Gone past its time (5 s) and the grace: the room forgets it, and
    // it is a fresh arrival (the queue empty: let in, not at the front).
    tokio::time::advance(Duration::from_secs(5 + 5) + Duration::from_millis(1)).await;
    assert_eq!(s.reservations(), 0);
    let back = admit(&s, "a", "ra").unwrap();
    assert!(!back.reserved);
}

#[tokio::test(start_paused = true)]
async fn a_request_let_in_for_its_reservation_and_dropped_leaves_nothing() {
    let (s, running, _queued) = loaded(4).await;
    refused(admit(&s, "a", "ra"));
    let before = s.estimate(&costing("probe", 100.0), None).unwrap();
    tokio::time::advance(Duration::from_millis(5_000)).await;
    let admitted = admit(&s, "a", "ra").unwrap();
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    assert!(mine.poll().is_pending());
    assert_eq!(s.snapshot().queued_total(), 5);
    // Its client leaves: not queued, not at the front, no reservation.
    drop(mine);
    assert_eq!(s.snapshot().queued_total(), 4);
    assert_eq!(s.reservations(), 0);
    let after = s.estimate(&costing("probe", 100.0), None).unwrap();
    assert_eq!(
        after.position,
        before.position - 1,
        "the reservation is gone"
    );
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn a_returning_request_and_fresh_arrivals_at_the_same_instant() {
    let (s, running, mut queued) = loaded(2).await;
    // 3 s of work ahead: due then.
    refused(admit(&s, "a", "ra"));
    tokio::time::advance(Duration::from_millis(3_000)).await;
    // At its due instant a fresh arrival with a short deadline comes
    // first: the reservation is ahead of it.
    let first = s.admit(&due_in("f1", 1), None, Some(&RequestId::from("f1")));
    let first = refused(first);
    assert_eq!(
        first.estimate().position,
        3,
        "behind the queue and the reservation"
    );
    // Then the reservation's owner, the same instant: let in at the front.
    let admitted = admit(&s, "a", "ra").unwrap();
    assert!(admitted.reserved);
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    assert!(mine.poll().is_pending());
    // And a fresh one without a deadline, shorter: behind it all the same.
    queued.push(wait(&s, "f2", costing("f2", 1.0)));
    drop(running);
    let permit = match mine.poll() {
        std::task::Poll::Ready(permit) => permit.unwrap(),
        std::task::Poll::Pending => panic!("the reservation first"),
    };
    assert!(granted(&mut queued).is_empty());
    drop(permit);
}

/// One running (1 s to go) and one long request (4 s) queued behind it;
/// a short request with a 500 ms deadline refused with its place kept
/// before the long one, due when the running one ends: the scheduler,
/// the running permit, the long one waiting.
async fn reserved_before_a_long_one() -> (
    std::sync::Arc<Scheduler>,
    corral_priority::Permit,
    Vec<Waiting>,
) {
    let (s, running, _) = loaded(0).await;
    let long = vec![wait(&s, "long", costing("long", 400.0))];
    let hurried = Ticket {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..costing("a", 100.0)
    };
    let refusal = refused(s.admit(&hurried, None, Some(&RequestId::from("ra"))));
    assert_eq!(
        refusal.estimate().position,
        0,
        "shorter: before the long one"
    );
    assert_eq!(millis(refusal.retry_after()), 1_000);
    (s, running, long)
}

fn back(s: &Scheduler) -> Result<Admitted, DeadlineUnreachable> {
    let ticket = Ticket {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..costing("a", 100.0)
    };
    s.admit(&ticket, None, Some(&RequestId::from("ra")))
}

#[tokio::test(start_paused = true)]
async fn a_permit_freed_just_before_a_reservation_is_due_is_kept_for_it() {
    let (s, running, mut long) = reserved_before_a_long_one().await;
    // The running one ends 200 ms early: the permit waits for the
    // reservation, not for the long one.
    tokio::time::advance(Duration::from_millis(800)).await;
    drop(running);
    assert!(granted(&mut long).is_empty(), "kept for the reservation");
    // Back when told: let in, and served at once.
    tokio::time::advance(Duration::from_millis(200)).await;
    let admitted = back(&s).unwrap();
    assert!(admitted.reserved);
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    let permit = match mine.poll() {
        std::task::Poll::Ready(permit) => permit.unwrap(),
        std::task::Poll::Pending => panic!("the kept permit"),
    };
    assert!(granted(&mut long).is_empty());
    drop(permit);
    assert_eq!(granted(&mut long).len(), 1, "then the long one");
}

#[tokio::test(start_paused = true)]
async fn back_a_little_early_with_its_permit_free_it_is_let_in() {
    let (s, running, mut long) = reserved_before_a_long_one().await;
    tokio::time::advance(Duration::from_millis(700)).await;
    drop(running);
    // 300 ms before its time, but its permit is free: its time.
    let admitted = back(&s).unwrap();
    assert!(admitted.reserved);
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    let std::task::Poll::Ready(Ok(_permit)) = mine.poll() else {
        panic!("the kept permit");
    };
    assert!(granted(&mut long).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_permit_kept_for_a_request_that_does_not_come_back_goes_to_the_queue() {
    let (s, running, mut long) = reserved_before_a_long_one().await;
    tokio::time::advance(Duration::from_millis(800)).await;
    drop(running);
    assert!(granted(&mut long).is_empty());
    // Kept until 500 ms past its time (1.5 s), then the long one's.
    tokio::time::sleep(Duration::from_millis(690)).await;
    assert!(granted(&mut long).is_empty(), "still kept at 1.49 s");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(granted(&mut long).len(), 1, "given up at 1.5 s");
    // The reservation itself stands until its grace ends.
    assert_eq!(s.reservations(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_arrival_waits_behind_the_permit_kept_for_a_reservation() {
    let (s, running, _long) = reserved_before_a_long_one().await;
    tokio::time::advance(Duration::from_millis(800)).await;
    drop(running);
    // The permit is free but kept for "a" (due in 200 ms, for 1 s): a
    // fresh request with half a second is not let in on a wait of 0.
    let fresh = Ticket {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..costing("f", 100.0)
    };
    let refusal = refused(s.admit(&fresh, None, None));
    assert_eq!(refusal.estimate().position, 1, "behind the reservation");
    // A hold (about a second, the last one learnt 800 ms) behind it.
    assert!(millis(refusal.estimate().eta) >= 800, "{refusal:?}");
}

#[tokio::test(start_paused = true)]
async fn back_early_it_does_not_take_a_permit_kept_for_a_reservation_due_before_it() {
    let (s, running, _long) = reserved_before_a_long_one().await;
    // "b" books behind "a": due at 2 s.
    let b = Ticket {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..costing("b", 100.0)
    };
    let refusal = refused(s.admit(&b, None, Some(&RequestId::from("rb"))));
    assert_eq!(millis(refusal.retry_after()), 2_000);
    tokio::time::advance(Duration::from_millis(1_050)).await;
    drop(running);
    // The permit is kept for "a" (due at 1 s, held till 1.5 s): "b",
    // back 950 ms early, does not take it.
    let again = refused(s.admit(&b, None, Some(&RequestId::from("rb"))));
    assert!(again.early(), "{again:?}");
    // "a" back: its permit.
    let admitted = back(&s).unwrap();
    assert!(admitted.reserved);
    let mut mine = spawn(s.acquire_admitted(due_in("a", 2), None, None, admitted));
    let std::task::Poll::Ready(Ok(_permit)) = mine.poll() else {
        panic!("the kept permit");
    };
}
