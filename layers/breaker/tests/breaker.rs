//! Every transition of the breaker with time paused, and the layer's
//! reading of outcomes: statuses, errors, broken streams, timeouts marked
//! by a layer above, and clients that leave.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_breaker::{
    Admission, BreakerConfig, BreakerLayer, BreakerOpen, BreakerService, Circuit, ResponseBody,
    State,
};
use corral_core::{
    AttemptTimedOut, Body, BoxError, Bus, Failure, MemoryBus, Outcome, Refusal, UpstreamFailed,
};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

const FAIL: Outcome = Outcome::Failure(Failure::Status(503));

/// The default config without a failure rate: only failures in a row count.
fn config() -> BreakerConfig {
    BreakerConfig {
        failure_rate: None,
        ..BreakerConfig::default()
    }
}

/// Admits and records one call; the admission it got.
fn call(
    circuit: &mut Circuit,
    config: &BreakerConfig,
    outcome: Outcome,
) -> Result<Admission, Duration> {
    let now = Instant::now();
    let (admission, _) = circuit.admit(config, now);
    if let Ok(a) = admission {
        circuit.record(config, now, a, outcome, false);
    }
    admission
}

/// A circuit opened by five failures in a row.
fn tripped(config: &BreakerConfig) -> Circuit {
    let mut circuit = Circuit::new();
    for _ in 0..5 {
        call(&mut circuit, config, FAIL).unwrap();
    }
    circuit
}

#[tokio::test(start_paused = true)]
async fn five_failures_in_a_row_open_it_and_it_fails_fast_for_the_time_left() {
    let config = config();
    let mut circuit = Circuit::new();
    for _ in 0..4 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
    call(&mut circuit, &config, Outcome::Success).unwrap();
    for _ in 0..4 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
    assert_eq!(circuit.state(), State::Closed, "a success broke the streak");
    call(&mut circuit, &config, FAIL).unwrap();
    assert!(matches!(circuit.state(), State::Open { .. }));
    assert_eq!(
        call(&mut circuit, &config, Outcome::Success),
        Err(Duration::from_secs(60))
    );
    tokio::time::advance(Duration::from_secs(45)).await;
    assert_eq!(
        call(&mut circuit, &config, Outcome::Success),
        Err(Duration::from_secs(15))
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_and_cancellations_do_not_count() {
    let config = config();
    let mut circuit = Circuit::new();
    for _ in 0..20 {
        call(&mut circuit, &config, Outcome::Ignored).unwrap();
        call(&mut circuit, &config, Outcome::Success).unwrap(); // a 404 is an answer
    }
    assert_eq!(circuit.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_over_the_window_trips_it_once_there_are_enough_calls() {
    let config = BreakerConfig {
        consecutive_failures: None,
        failure_rate: Some(0.5),
        window_calls: 20,
        min_calls: 10,
        ..BreakerConfig::default()
    };
    let mut circuit = Circuit::new();
    for i in 0..9 {
        let outcome = if i % 2 == 0 { FAIL } else { Outcome::Success };
        call(&mut circuit, &config, outcome).unwrap();
    }
    assert_eq!(
        circuit.state(),
        State::Closed,
        "5 of 9 failed, but 10 calls are needed"
    );
    call(&mut circuit, &config, Outcome::Success).unwrap();
    assert!(
        matches!(circuit.state(), State::Open { .. }),
        "5 of 10 calls failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let config = BreakerConfig {
        consecutive_failures: None,
        failure_rate: Some(0.5),
        window_time: Some(Duration::from_secs(10)),
        min_calls: 4,
        ..BreakerConfig::default()
    };
    let mut circuit = Circuit::new();
    for _ in 0..3 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..3 {
        call(&mut circuit, &config, Outcome::Success).unwrap();
    }
    call(&mut circuit, &config, FAIL).unwrap();
    assert_eq!(circuit.state(), State::Closed, "1 of 4 recent calls failed");
}

#[tokio::test(start_paused = true)]
async fn a_rate_of_slow_calls_trips_it() {
    let config = BreakerConfig {
        consecutive_failures: None,
        failure_rate: None,
        slow_call_duration: Some(Duration::from_secs(5)),
        slow_call_rate: 0.8,
        min_calls: 5,
        ..BreakerConfig::default()
    };
    let mut circuit = Circuit::new();
    let now = Instant::now();
    for slow in [true, true, true, false, true] {
        let (admission, _) = circuit.admit(&config, now);
        circuit.record(&config, now, admission.unwrap(), Outcome::Success, slow);
    }
    assert!(matches!(circuit.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn after_the_open_time_probes_decide_close_or_reopen_for_longer() {
    let config = BreakerConfig {
        half_open_probes: 2,
        open_backoff: 2.0,
        ..config()
    };
    let mut circuit = tripped(&config);
    tokio::time::advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    let (first, transition) = circuit.admit(&config, now);
    assert_eq!(first, Ok(Admission::Probe));
    assert_eq!(transition.unwrap().to, State::HalfOpen);
    let (second, _) = circuit.admit(&config, now);
    assert_eq!(second, Ok(Admission::Probe));
    assert!(
        circuit.admit(&config, now).0.is_err(),
        "only two probes at a time"
    );

    // One probe fails: open again, for twice as long.
    circuit.record(&config, now, Admission::Probe, Outcome::Success, false);
    let reopened = circuit
        .record(&config, now, Admission::Probe, FAIL, false)
        .unwrap();
    assert_eq!(reopened.from, State::HalfOpen);
    assert_eq!(circuit.admit(&config, now).0, Err(Duration::from_secs(120)));

    // This time both probes succeed: closed, and the backoff resets.
    tokio::time::advance(Duration::from_secs(120)).await;
    let now = Instant::now();
    for _ in 0..2 {
        let (probe, _) = circuit.admit(&config, now);
        assert_eq!(probe, Ok(Admission::Probe));
    }
    circuit.record(&config, now, Admission::Probe, Outcome::Success, false);
    assert_eq!(circuit.state(), State::HalfOpen);
    let closed = circuit
        .record(&config, now, Admission::Probe, Outcome::Success, false)
        .unwrap();
    assert_eq!(closed.to, State::Closed);
    for _ in 0..5 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
    assert_eq!(
        circuit.admit(&config, Instant::now()).0,
        Err(Duration::from_secs(60)),
        "back to 60 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_client_left_frees_its_place_for_another() {
    let config = config();
    let mut circuit = tripped(&config);
    tokio::time::advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    assert_eq!(circuit.admit(&config, now).0, Ok(Admission::Probe));
    assert!(circuit.admit(&config, now).0.is_err());
    circuit.record(&config, now, Admission::Probe, Outcome::Ignored, false);
    assert_eq!(circuit.admit(&config, now).0, Ok(Admission::Probe));
}

type UpstreamBody = Channel<Bytes, std::io::Error>;
type Upstream = mock::Mock<Request<Body>, Response<UpstreamBody>>;
type Handle = mock::Handle<Request<Body>, Response<UpstreamBody>>;
type Guarded = BreakerService<Upstream>;
type Answer = Result<Response<ResponseBody<UpstreamBody>>, BoxError>;

/// An upstream answer with `status` and a body never written.
fn answer(status: u16) -> Response<UpstreamBody> {
    let mut response = Response::new(Channel::new(1).1);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// The layer from `config`, telling `bus` if given, over a mocked upstream
/// that takes a thousand requests: the layer, its service and the
/// upstream's handle.
fn guarded(
    config: &BreakerConfig,
    bus: Option<&Arc<MemoryBus>>,
) -> (BreakerLayer, Guarded, Handle) {
    let mut layer = BreakerLayer::new(config).unwrap();
    if let Some(bus) = bus {
        layer = layer.with_bus(bus.clone() as Arc<dyn Bus>);
    }
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    handle.allow(1000);
    (layer.clone(), layer.layer(upstream), handle)
}

/// Sends `request` through `service`, lets `reply` answer it upstream, and
/// waits for what the client gets.
async fn through(
    service: &Guarded,
    handle: &mut Handle,
    request: Request<Body>,
    reply: impl FnOnce(mock::SendResponse<Response<UpstreamBody>>),
) -> Answer {
    let call = tokio::spawn(service.clone().oneshot(request));
    let (_, send) = handle.next_request().await.unwrap();
    reply(send);
    call.await.unwrap()
}

/// Sends `request` through `service` and answers it upstream with `status`.
async fn answered(
    service: &Guarded,
    handle: &mut Handle,
    request: Request<Body>,
    status: u16,
) -> Answer {
    through(service, handle, request, |reply| {
        reply.send_response(answer(status))
    })
    .await
}

/// Sends `request` through `service`; once it reaches the upstream, runs
/// `before_leaving` and drops the call, as a client that leaves.
async fn abandoned(
    service: &Guarded,
    handle: &mut Handle,
    request: Request<Body>,
    before_leaving: impl FnOnce(),
) {
    let mut pending = tokio_test::task::spawn(service.clone().oneshot(request));
    assert!(pending.poll().is_pending());
    let _ = handle.next_request().await.unwrap();
    before_leaving();
    drop(pending);
}

#[tokio::test(start_paused = true)]
async fn the_layer_counts_5xx_and_connection_errors_and_fails_fast_with_503() {
    let bus = Arc::new(MemoryBus::new("r1"));
    let mut events = bus.subscribe();
    let (_, service, mut handle) = guarded(&config(), Some(&bus));
    for i in 0..5 {
        if i % 2 == 0 {
            let answer = answered(&service, &mut handle, Request::new(Body::empty()), 503).await;
            assert_eq!(
                answer.unwrap().status(),
                503,
                "the upstream's answer passes through"
            );
        } else {
            let refused = |reply: mock::SendResponse<_>| {
                reply.send_error(UpstreamFailed::new("http://x", true, "connection refused"))
            };
            let answer = through(&service, &mut handle, Request::new(Body::empty()), refused).await;
            assert!(answer.is_err());
        }
    }
    let err = service
        .clone()
        .oneshot(Request::new(Body::empty()))
        .await
        .unwrap_err();
    let open = err.downcast_ref::<BreakerOpen>().unwrap();
    assert_eq!(open.status(), 503);
    assert_eq!(Refusal::reason(open), "breaker_open");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    let event = events.try_recv().unwrap();
    assert_eq!(&*event.channel, "ollama:breaker:state");
    assert_eq!(event.message["to"], "open");
    assert_eq!(event.message["state"], 2);
}

/// The shared test config, opening after two failures in a row.
fn two_strikes() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: Some(2),
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_fails_and_a_clean_one_succeeds_only_at_its_end() {
    let (layer, service, mut handle) = guarded(&two_strikes(), None);
    for _ in 0..2 {
        let (tx, body) = Channel::<Bytes, std::io::Error>::new(1);
        let streaming = |reply: mock::SendResponse<_>| reply.send_response(Response::new(body));
        let answer = through(
            &service,
            &mut handle,
            Request::new(Body::empty()),
            streaming,
        )
        .await;
        let mut body = answer.unwrap().into_body();
        tx.abort(std::io::Error::other("reset")); // the upstream's stream breaks
        assert!(body.frame().await.unwrap().is_err());
    }
    assert!(matches!(layer.states()[0].1, State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_counts_as_a_timeout_only_when_marked() {
    let (layer, service, mut handle) = guarded(&two_strikes(), None);
    // Two clients leave: nothing counts.
    for _ in 0..2 {
        abandoned(&service, &mut handle, Request::new(Body::empty()), || {}).await;
    }
    assert_eq!(layer.states()[0].1, State::Closed);
    // Two attempts abandoned for time by a layer above: they count.
    for _ in 0..2 {
        let flag = AttemptTimedOut::default();
        let mut request = Request::new(Body::empty());
        request.extensions_mut().insert(flag.clone());
        abandoned(&service, &mut handle, request, || flag.set()).await;
    }
    assert!(matches!(layer.states()[0].1, State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn per_model_one_models_failures_open_its_breaker_and_not_anothers() {
    use corral_core::{Endpoint, RequestMeta};
    let bus = Arc::new(MemoryBus::new("r1"));
    let mut events = bus.subscribe();
    let config = BreakerConfig {
        per_model: true,
        ..config()
    };
    let (_, service, mut handle) = guarded(&config, Some(&bus));
    let to = |model: &str| {
        let mut request = Request::new(Body::empty());
        request
            .extensions_mut()
            .insert(RequestMeta::new("r".into(), Endpoint::Chat).with_model(Some(model.into())));
        request
    };
    for _ in 0..5 {
        answered(&service, &mut handle, to("llama3:70b"), 503)
            .await
            .unwrap();
    }
    let err = service.clone().oneshot(to("llama3:70b")).await.unwrap_err();
    assert!(err.downcast_ref::<BreakerOpen>().is_some(), "{err}");
    let event = events.try_recv().unwrap();
    assert_eq!(event.message["breaker"], "llama3:70b");
    assert_eq!(event.message["to"], "open");

    // Another model goes on through its own, closed breaker.
    let answer = answered(&service, &mut handle, to("tinyllama"), 200).await;
    assert_eq!(answer.unwrap().status(), 200);

    // Names are the clients': past 64 breakers, new names share the
    // upstream's, which is closed.
    for i in 0..100 {
        answered(&service, &mut handle, to(&format!("made-up-{i}")), 404)
            .await
            .unwrap();
    }
    let mut opened = Vec::new();
    while let Ok(event) = events.try_recv() {
        opened.push(event.message["breaker"].to_string());
    }
    assert!(opened.is_empty(), "{opened:?}");
    assert!(
        service.clone().oneshot(to("llama3:70b")).await.is_err(),
        "still open"
    );
}
