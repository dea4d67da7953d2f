//! The shed layer alone, with time paused and a queue the test controls:
//! lowest priorities refused first, waiting for room, CoDel, per-agent
//! quota, Retry-After from the drain rate, and backpressure on the bus.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{
    Body, BoxError, Bus, Endpoint, LoadCell, LoadSnapshot, MemoryBus, Priority, Refusal,
    RequestMeta, UpstreamLoad,
};
use corral_shed::{Shed, ShedConfig, ShedLayer, ShedReason, ShedService};
use http::Request;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, ServiceExt};
use tower_test::mock;
use tower_test::mock::SendResponse;

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

/// A load cell holding `queue`.
fn cell(queue: &Arc<Queue>) -> LoadCell {
    let cell = LoadCell::default();
    cell.set(queue.clone()).unwrap();
    cell
}

/// A request to `endpoint` from `agent` at `priority`.
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

/// A chat request from `agent` at `priority`.
fn chat(agent: &str, priority: u8) -> Request<Body> {
    request(Endpoint::Chat, agent, priority)
}

/// The default config with a queue bound of `max_queue`.
fn config(max_queue: usize) -> ShedConfig {
    ShedConfig {
        max_queue,
        ..ShedConfig::default()
    }
}

type Upstream = mock::Mock<Request<Body>, &'static str>;
type Handle = mock::Handle<Request<Body>, &'static str>;
type Shedding = ShedService<Upstream>;
type Call = JoinHandle<Result<&'static str, BoxError>>;

/// `layer` over a mocked upstream, and the upstream's handle.
fn over_mock(layer: ShedLayer) -> (Shedding, Handle) {
    let (upstream, handle): (Upstream, _) = mock::pair();
    (layer.layer(upstream), handle)
}

/// The layer from `config` reading the load of `queue`, over a mocked
/// upstream, and the upstream's handle.
fn shedding(config: &ShedConfig, queue: &Arc<Queue>) -> (Shedding, Handle) {
    over_mock(
        ShedLayer::new(config)
            .map(|l| l.with_load(cell(queue)))
            .unwrap(),
    )
}

/// Sends `request` through `service` and answers it upstream with
/// `answer`: what the client got.
async fn answered(
    service: &Shedding,
    handle: &mut Handle,
    request: Request<Body>,
    answer: &'static str,
) -> &'static str {
    let call = tokio::spawn(service.clone().oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(answer);
    call.await.unwrap().unwrap()
}

/// Sends `request` through `service`, which must refuse it: why.
async fn refused(service: &Shedding, request: Request<Body>) -> BoxError {
    match service.clone().oneshot(request).await {
        Ok(answer) => panic!("not shed: {answer}"),
        Err(err) => err,
    }
}

/// Sends each of `requests` through `service` on a task of its own and
/// waits until all reach the upstream, unanswered: the calls, and the
/// upstream's replies in the order the requests came.
async fn held<const N: usize>(
    service: &Shedding,
    handle: &mut Handle,
    requests: [Request<Body>; N],
) -> (Vec<Call>, Vec<SendResponse<&'static str>>) {
    let calls: Vec<Call> = requests
        .into_iter()
        .map(|request| tokio::spawn(service.clone().oneshot(request)))
        .collect();
    let mut replies = Vec::new();
    for _ in 0..N {
        replies.push(handle.next_request().await.unwrap().1);
    }
    (calls, replies)
}

/// The refusal, which must be a [`Shed`].
fn shed_of(err: &BoxError) -> &Shed {
    err.downcast_ref::<Shed>()
        .unwrap_or_else(|| panic!("not a Shed: {err}"))
}

/// Sends a request of the lowest priority to `endpoint` through the layer
/// bounded at `max_queue`, over a queue holding `queued`, and answers it
/// upstream: what the client got.
async fn lowest_priority_through(
    queued: usize,
    max_queue: usize,
    endpoint: Endpoint,
) -> &'static str {
    let queue = Queue::new(queued);
    let (service, mut handle) = shedding(&config(max_queue), &queue);
    answered(&service, &mut handle, request(endpoint, "a", 10), "ok").await
}

#[tokio::test(start_paused = true)]
async fn with_room_everyone_goes_through() {
    assert_eq!(
        lowest_priority_through(10, 100, Endpoint::Generate).await,
        "ok"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_low_priorities_at_once_with_a_retry_after_from_the_drain_rate() {
    let queue = Queue::new(100);
    queue.set(|l| l.completions_per_sec = 4.0);
    let (service, _handle) = shedding(&config(100), &queue);
    for priority in [8, 9, 10] {
        let err = refused(&service, chat("a", priority)).await;
        let shed = shed_of(&err);
        assert_eq!(shed.reason(), ShedReason::QueueFull);
        assert_eq!(shed.status(), 503);
        assert_eq!(Refusal::reason(shed), "shed");
        assert_eq!(
            shed.retry_after(),
            Some(Duration::from_millis(250)),
            "room once one of 100 leaves, at 4 a second"
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
    let (service, mut handle) = shedding(&config(100), &queue);
    let mut call = tokio_test::task::spawn(service.oneshot(chat("a", 3)));
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
    let (service, _handle) = shedding(&config(100), &queue);
    let started = Instant::now();
    let err = refused(&service, chat("a", 1)).await;
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
    let codel = ShedConfig {
        codel_target: Duration::from_secs(10),
        codel_interval: Duration::from_secs(30),
        ..config(1000)
    };
    let (service, mut handle) = shedding(&codel, &queue);
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
    let per_agent = ShedConfig {
        max_waiting_per_agent: Some(2),
        ..config(100)
    };
    let (service, mut handle) = shedding(&per_agent, &queue);
    handle.allow(10);
    let (mut calls, mut replies) = held(&service, &mut handle, [chat("a", 5), chat("a", 5)]).await;
    let (a1, first) = (calls.remove(0), replies.remove(0));

    let err = refused(&service, chat("a", 1)).await;
    let shed = shed_of(&err);
    assert_eq!(
        (shed.reason(), shed.status().as_u16()),
        (ShedReason::AgentQueueFull, 429)
    );
    assert_eq!(
        answered(&service, &mut handle, chat("b", 5), "b").await,
        "b"
    );

    first.send_response("a1");
    a1.await.unwrap().unwrap();
    assert_eq!(
        answered(&service, &mut handle, chat("a", 5), "a3").await,
        "a3",
        "room again once one answered"
    );
}

#[tokio::test(start_paused = true)]
async fn metadata_reads_are_never_shed() {
    assert_eq!(
        lowest_priority_through(1_000_000, 10, Endpoint::Tags).await,
        "ok"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_scheduler_it_bounds_what_it_let_through() {
    let layer = ShedLayer::new(&config(2))
        .map(|l| l.with_load(LoadCell::default()))
        .unwrap();
    let (service, mut handle) = over_mock(layer);
    handle.allow(10);
    let _held = held(&service, &mut handle, [chat("a", 5), chat("b", 5)]).await;
    let err = refused(&service, chat("c", 9)).await;
    assert_eq!(shed_of(&err).reason(), ShedReason::QueueFull);
}

#[tokio::test(start_paused = true)]
async fn refusals_are_announced_on_the_bus_at_most_once_per_interval() {
    let queue = Queue::new(100);
    let bus = Arc::new(MemoryBus::new("replica-a"));
    let mut events = bus.subscribe();
    let layer = ShedLayer::new(&config(100))
        .map(|l| {
            l.with_load(cell(&queue))
                .with_bus(bus.clone() as Arc<dyn Bus>)
        })
        .unwrap();
    let (service, _handle) = over_mock(layer);
    for _ in 0..5 {
        let _ = service.clone().oneshot(chat("a", 9)).await;
    }
    let first = events.try_recv().unwrap();
    assert_eq!(&*first.channel, "system:backpressure");
    assert_eq!(first.message["refused"], 1);
    assert!(events.try_recv().is_err(), "one event per interval");

    tokio::time::advance(Duration::from_secs(1)).await;
    let _ = service.clone().oneshot(chat("a", 10)).await;
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
    let byte_bound = ShedConfig {
        max_queue_bytes: Some(4_000_000),
        ..config(100)
    };
    let (service, _handle) = shedding(&byte_bound, &queue);
    let err = refused(&service, request(Endpoint::Embed, "a", 9)).await;
    assert_eq!(shed_of(&err).reason(), ShedReason::QueueFull);
}

#[test]
fn bad_configs_name_the_key() {
    /// A change that makes a valid config invalid.
    type Spoil = fn(&mut ShedConfig);
    let cases: [(&str, Spoil); 3] = [
        ("max_queue", |c| c.max_queue = 0),
        ("drop_above", |c| c.drop_above = 0),
        ("max_waiting_per_agent", |c| {
            c.max_waiting_per_agent = Some(0)
        }),
    ];
    for (key, spoil) in cases {
        let mut config = ShedConfig::default();
        spoil(&mut config);
        assert_eq!(config.validate().unwrap_err().key(), key, "{key}");
    }
}
