//! Every transition of the breaker with time paused, and the layer's
//! reading of outcomes: statuses, errors, broken streams, timeouts marked
//! by a layer above, and clients that leave.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_breaker::{Admission, BreakerConfig, BreakerLayer, BreakerOpen, Circuit, State};
use corral_core::{
    AttemptTimedOut, Body, Bus, Failure, MemoryBus, Outcome, Refusal, UpstreamFailed,
};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

const FAIL: Outcome = Outcome::Failure(Failure::Status(503));

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
    let mut circuit = Circuit::new();
    for _ in 0..5 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
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
    let mut circuit = Circuit::new();
    for _ in 0..5 {
        call(&mut circuit, &config, FAIL).unwrap();
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    assert_eq!(circuit.admit(&config, now).0, Ok(Admission::Probe));
    assert!(circuit.admit(&config, now).0.is_err());
    circuit.record(&config, now, Admission::Probe, Outcome::Ignored, false);
    assert_eq!(circuit.admit(&config, now).0, Ok(Admission::Probe));
}

type Upstream = mock::Mock<Request<Body>, Response<Channel<Bytes, std::io::Error>>>;

fn answer(status: u16) -> Response<Channel<Bytes, std::io::Error>> {
    let mut response = Response::new(Channel::new(1).1);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

#[tokio::test(start_paused = true)]
async fn the_layer_counts_5xx_and_connection_errors_and_fails_fast_with_503() {
    let bus = Arc::new(MemoryBus::new("r1"));
    let mut events = bus.subscribe();
    let layer = BreakerLayer::new(&config())
        .map(|l| l.with_bus(bus.clone() as Arc<dyn Bus>))
        .unwrap();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    handle.allow(100);
    for i in 0..5 {
        let call = tokio::spawn(service.clone().oneshot(Request::new(Body::empty())));
        let (_, reply) = handle.next_request().await.unwrap();
        if i % 2 == 0 {
            reply.send_response(answer(503));
            assert_eq!(
                call.await.unwrap().unwrap().status(),
                503,
                "the upstream's answer passes through"
            );
        } else {
            reply.send_error(UpstreamFailed::new("http://x", true, "connection refused"));
            assert!(call.await.unwrap().is_err());
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

#[tokio::test(start_paused = true)]
async fn a_broken_stream_fails_and_a_clean_one_succeeds_only_at_its_end() {
    let layer = BreakerLayer::new(&BreakerConfig {
        consecutive_failures: Some(2),
        ..config()
    })
    .unwrap();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    handle.allow(100);
    for _ in 0..2 {
        let call = tokio::spawn(service.clone().oneshot(Request::new(Body::empty())));
        let (_, reply) = handle.next_request().await.unwrap();
        let (tx, body) = Channel::<Bytes, std::io::Error>::new(1);
        reply.send_response(Response::new(body));
        let mut body = call.await.unwrap().unwrap().into_body();
        tx.abort(std::io::Error::other("reset")); // the upstream's stream breaks
        assert!(body.frame().await.unwrap().is_err());
    }
    assert!(matches!(layer.states()[0].1, State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_counts_as_a_timeout_only_when_marked() {
    let layer = BreakerLayer::new(&BreakerConfig {
        consecutive_failures: Some(2),
        ..config()
    })
    .unwrap();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    handle.allow(100);
    // Two clients leave: nothing counts.
    for _ in 0..2 {
        let mut pending =
            tokio_test::task::spawn(service.clone().oneshot(Request::new(Body::empty())));
        assert!(pending.poll().is_pending());
        let _ = handle.next_request().await.unwrap();
        drop(pending);
    }
    assert_eq!(layer.states()[0].1, State::Closed);
    // Two attempts abandoned for time by a layer above: they count.
    for _ in 0..2 {
        let flag = AttemptTimedOut::default();
        let mut request = Request::new(Body::empty());
        request.extensions_mut().insert(flag.clone());
        let mut pending = tokio_test::task::spawn(service.clone().oneshot(request));
        assert!(pending.poll().is_pending());
        let _ = handle.next_request().await.unwrap();
        flag.set();
        drop(pending);
    }
    assert!(matches!(layer.states()[0].1, State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn per_model_one_models_failures_open_its_breaker_and_not_anothers() {
    use corral_core::{Endpoint, RequestMeta};
    let bus = Arc::new(MemoryBus::new("r1"));
    let mut events = bus.subscribe();
    let layer = BreakerLayer::new(&BreakerConfig {
        per_model: true,
        ..config()
    })
    .map(|l| l.with_bus(bus.clone() as Arc<dyn Bus>))
    .unwrap();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    handle.allow(1000);
    let to = |model: &str| {
        let mut request = Request::new(Body::empty());
        request
            .extensions_mut()
            .insert(RequestMeta::new("r".into(), Endpoint::Chat).with_model(Some(model.into())));
        request
    };
    for _ in 0..5 {
        let call = tokio::spawn(service.clone().oneshot(to("llama3:70b")));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(answer(503));
        call.await.unwrap().unwrap();
    }
    let err = service.clone().oneshot(to("llama3:70b")).await.unwrap_err();
    assert!(err.downcast_ref::<BreakerOpen>().is_some(), "{err}");
    let event = events.try_recv().unwrap();
    assert_eq!(event.message["breaker"], "llama3:70b");
    assert_eq!(event.message["to"], "open");

    // Another model goes on through its own, closed breaker.
    let call = tokio::spawn(service.clone().oneshot(to("tinyllama")));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // Names are the clients': past 64 breakers, new names share the
    // upstream's, which is closed.
    for i in 0..100 {
        let call = tokio::spawn(service.clone().oneshot(to(&format!("made-up-{i}"))));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(answer(404));
        call.await.unwrap().unwrap();
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
