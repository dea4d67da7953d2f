//! The shed layer alone, with time paused and a queue the test controls:
//! lowest priorities refused first, waiting for room, CoDel, per-agent
//! quota, Retry-After from the drain rate, and backpressure on the bus.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{
    Body, Bus, Endpoint, LoadCell, LoadSnapshot, MemoryBus, Priority, Refusal, RequestMeta,
    UpstreamLoad,
};
use corral_shed::{Shed, ShedConfig, ShedLayer, ShedReason};
use http::Request;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, ServiceExt};
use tower_test::mock;

/// A scheduler stand-in whose load the test sets.
struct Queue {
    load: Mutex<LoadSnapshot>,
    changes: Notify,
}

impl Queue {
    fn new(queued: usize) -> Arc<Self> {
        let mut load = LoadSnapshot::idle(4);
        load.in_flight = 4;
        load.queued[4] = queued;
        Arc::new(Self {
            load: Mutex::new(load),
            changes: Notify::new(),
        })
    }

    fn set(&self, f: impl FnOnce(&mut LoadSnapshot)) {
        f(&mut self.load.lock().unwrap());
        self.changes.notify_waiters();
    }
}

impl UpstreamLoad for Queue {
    fn snapshot(&self) -> LoadSnapshot {
        self.load.lock().unwrap().clone()
    }

    fn changes(&self) -> Option<&Notify> {
        Some(&self.changes)
    }
}

fn cell(queue: &Arc<Queue>) -> LoadCell {
    let cell = LoadCell::default();
    cell.set(queue.clone()).unwrap();
    cell
}

fn request(endpoint: Endpoint, agent: &str, priority: u8) -> Request<Body> {
    let meta = RequestMeta::new("r".into(), endpoint)
        .with_agent(agent.into(), "default".into(), false)
        .with_priority(Priority::new(priority).unwrap());
    let mut request = Request::post("/api/generate")
        .body(Body::from("{}"))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

fn config(max_queue: usize) -> ShedConfig {
    ShedConfig {
        max_queue,
        ..ShedConfig::default()
    }
}

type Upstream = mock::Mock<Request<Body>, &'static str>;

fn shed_of(err: &corral_core::BoxError) -> &Shed {
    err.downcast_ref::<Shed>()
        .unwrap_or_else(|| panic!("not a Shed: {err}"))
}

#[tokio::test(start_paused = true)]
async fn with_room_everyone_goes_through() {
    let queue = Queue::new(10);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(100))
        .map(|l| l.with_load(cell(&queue)))
        .unwrap()
        .layer(upstream);
    let call = tokio::spawn(service.oneshot(request(Endpoint::Generate, "a", 10)));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response("ok");
    assert_eq!(call.await.unwrap().unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_low_priorities_at_once_with_a_retry_after_from_the_drain_rate() {
    let queue = Queue::new(100);
    queue.set(|l| l.completions_per_sec = 4.0);
    let (upstream, _handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(100))
        .map(|l| l.with_load(cell(&queue)))
        .unwrap()
        .layer(upstream);
    for priority in [8, 9, 10] {
        let err = service
            .clone()
            .oneshot(request(Endpoint::Chat, "a", priority))
            .await
            .unwrap_err();
        let shed = shed_of(&err);
        assert_eq!(shed.reason(), ShedReason::QueueFull);
        assert_eq!(shed.status(), 503);
        assert_eq!(Refusal::reason(shed), "shed");
        assert_eq!(
            shed.retry_after(),
            Some(Duration::from_secs(25)),
            "100 waiting at 4 a second"
        );
        assert!(
            shed.to_string().contains("100 requests are waiting"),
            "{shed}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_higher_priority_waits_for_room_and_goes_through_when_it_comes() {
    let queue = Queue::new(100);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(100))
        .map(|l| l.with_load(cell(&queue)))
        .unwrap()
        .layer(upstream);
    let mut call = tokio_test::task::spawn(service.oneshot(request(Endpoint::Chat, "a", 3)));
    assert_pending!(call.poll());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_pending!(call.poll());

    queue.set(|l| l.queued[4] = 99);
    assert!(call.is_woken(), "room wakes the waiter");
    assert_pending!(call.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response("ok");
    assert_eq!(assert_ready!(call.poll()).unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_higher_priority_that_finds_no_room_in_time_is_refused() {
    let queue = Queue::new(100);
    let (upstream, _handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(100))
        .map(|l| l.with_load(cell(&queue)))
        .unwrap()
        .layer(upstream);
    let started = Instant::now();
    let err = service
        .oneshot(request(Endpoint::Chat, "a", 1))
        .await
        .unwrap_err();
    assert_eq!(shed_of(&err).reason(), ShedReason::NoRoomInTime);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "it waited wait_for_space"
    );
}

#[tokio::test(start_paused = true)]
async fn delay_above_target_for_a_whole_interval_sheds_low_priorities_until_it_falls() {
    let queue = Queue::new(10);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let layer = ShedLayer::new(&ShedConfig {
        codel_target: Duration::from_secs(10),
        codel_interval: Duration::from_secs(30),
        ..config(1000)
    })
    .map(|l| l.with_load(cell(&queue)))
    .unwrap();
    let service = layer.layer(upstream);
    let through = |priority: u8| {
        let service = service.clone();
        async move {
            let mut call = tokio_test::task::spawn(service.oneshot(request(
                Endpoint::Generate,
                "a",
                priority,
            )));
            match call.poll() {
                std::task::Poll::Ready(Err(e)) => Err(shed_of(&e).reason()),
                _ => Ok(()),
            }
        }
    };
    handle.allow(100);
    let long_ago = Instant::now();
    tokio::time::advance(Duration::from_secs(11)).await;
    queue.set(|l| l.oldest_waiting_since = Some(long_ago));
    assert_eq!(
        through(9).await,
        Ok(()),
        "above target, but not yet for an interval"
    );
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(through(9).await, Ok(()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        through(9).await,
        Err(ShedReason::QueueDelay),
        "a whole interval above target"
    );
    assert_eq!(
        through(7).await,
        Ok(()),
        "higher priorities still go through"
    );

    queue.set(|l| l.oldest_waiting_since = Some(Instant::now()));
    assert_eq!(
        through(9).await,
        Ok(()),
        "the delay fell: shedding stops at once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_over_its_own_quota_gets_429_and_others_go_on() {
    let queue = Queue::new(0);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&ShedConfig {
        max_waiting_per_agent: Some(2),
        ..config(100)
    })
    .map(|l| l.with_load(cell(&queue)))
    .unwrap()
    .layer(upstream);
    handle.allow(10);
    let a1 = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "a", 5)));
    let _a2 = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "a", 5)));
    let (_, first) = handle.next_request().await.unwrap();
    let (_, _second) = handle.next_request().await.unwrap();

    let err = service
        .clone()
        .oneshot(request(Endpoint::Chat, "a", 1))
        .await
        .unwrap_err();
    let shed = shed_of(&err);
    assert_eq!(
        (shed.reason(), shed.status().as_u16()),
        (ShedReason::AgentQueueFull, 429)
    );
    let b = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "b", 5)));
    let (_, reply_b) = handle.next_request().await.unwrap();
    reply_b.send_response("b");
    assert_eq!(b.await.unwrap().unwrap(), "b");

    first.send_response("a1");
    a1.await.unwrap().unwrap();
    let a3 = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "a", 5)));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response("a3");
    assert_eq!(
        a3.await.unwrap().unwrap(),
        "a3",
        "room again once one answered"
    );
}

#[tokio::test(start_paused = true)]
async fn metadata_reads_are_never_shed() {
    let queue = Queue::new(1_000_000);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(10))
        .map(|l| l.with_load(cell(&queue)))
        .unwrap()
        .layer(upstream);
    let call = tokio::spawn(service.oneshot(request(Endpoint::Tags, "a", 10)));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response("tags");
    assert_eq!(call.await.unwrap().unwrap(), "tags");
}

#[tokio::test(start_paused = true)]
async fn without_a_scheduler_it_bounds_what_it_let_through() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(2))
        .map(|l| l.with_load(LoadCell::default()))
        .unwrap()
        .layer(upstream);
    handle.allow(10);
    let _a = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "a", 5)));
    let _b = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "b", 5)));
    let (_, _ra) = handle.next_request().await.unwrap();
    let (_, _rb) = handle.next_request().await.unwrap();
    let err = service
        .clone()
        .oneshot(request(Endpoint::Chat, "c", 9))
        .await
        .unwrap_err();
    assert_eq!(shed_of(&err).reason(), ShedReason::QueueFull);
}

#[tokio::test(start_paused = true)]
async fn refusals_are_announced_on_the_bus_at_most_once_per_interval() {
    let queue = Queue::new(100);
    let bus = Arc::new(MemoryBus::new("replica-a"));
    let mut events = bus.subscribe();
    let (upstream, _handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&config(100))
        .map(|l| {
            l.with_load(cell(&queue))
                .with_bus(bus.clone() as Arc<dyn Bus>)
        })
        .unwrap()
        .layer(upstream);
    for _ in 0..5 {
        let _ = service
            .clone()
            .oneshot(request(Endpoint::Chat, "a", 9))
            .await;
    }
    let first = events.try_recv().unwrap();
    assert_eq!(&*first.channel, "system:backpressure");
    assert_eq!(first.message["refused"], 1);
    assert!(events.try_recv().is_err(), "one event per interval");

    tokio::time::advance(Duration::from_secs(1)).await;
    let _ = service
        .clone()
        .oneshot(request(Endpoint::Chat, "a", 10))
        .await;
    let second = events.try_recv().unwrap();
    assert_eq!(
        second.message["refused"], 5,
        "the four held back and this one"
    );
    assert_eq!(second.message["by_priority"]["9"], 4);
    assert_eq!(second.message["by_priority"]["10"], 1);
    assert_eq!(second.message["max_queue"], 100);
}

#[tokio::test(start_paused = true)]
async fn a_byte_bound_fills_the_queue_too() {
    let queue = Queue::new(3);
    queue.set(|l| l.queued_bytes = 5_000_000);
    let (upstream, _handle): (Upstream, _) = mock::pair();
    let service = ShedLayer::new(&ShedConfig {
        max_queue_bytes: Some(4_000_000),
        ..config(100)
    })
    .map(|l| l.with_load(cell(&queue)))
    .unwrap()
    .layer(upstream);
    let err = service
        .oneshot(request(Endpoint::Embed, "a", 9))
        .await
        .unwrap_err();
    assert_eq!(shed_of(&err).reason(), ShedReason::QueueFull);
}

#[test]
fn bad_configs_name_the_key() {
    for (config, key) in [
        (
            ShedConfig {
                max_queue: 0,
                ..ShedConfig::default()
            },
            "max_queue",
        ),
        (
            ShedConfig {
                drop_above: 0,
                ..ShedConfig::default()
            },
            "drop_above",
        ),
        (
            ShedConfig {
                max_waiting_per_agent: Some(0),
                ..ShedConfig::default()
            },
            "max_waiting_per_agent",
        ),
    ] {
        assert_eq!(config.validate().unwrap_err().key(), key);
    }
}
