//! The retry layer's timeouts, with time paused: the first byte (never on
//! a non-streamed generation, and no second run after it by default), the
//! whole request, and a stream that stalls (ended with a typed error,
//! never retried).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use bytes::Bytes;
use corral_core::{AttemptTimedOut, RequestMeta, Timeout};
use corral_retry::RetryConfig;
use http::Response;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use common::{answer, config, layer, no_more_attempts, request, Upstream};

#[tokio::test(start_paused = true)]
async fn a_stream_that_started_is_never_retried_and_a_stall_ends_it_with_a_timeout_error() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        idle_timeout: Some(Duration::from_secs(5)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (attempt, reply) = handle.next_request().await.unwrap();
    let mark = attempt
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .clone();
    let (mut tx, body) = Channel::new(4);
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "application/x-ndjson".parse().unwrap());
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    tx.send_data(Bytes::from_static(b"{\"response\":\"a\",\"done\":false}\n"))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    // The upstream stalls: after 5 s the stream ends with a typed error,
    // which the layers above count and the proxy renders for the client.
    let started = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let timeout = err.downcast_ref::<Timeout>().unwrap();
    assert_eq!(timeout.kind(), corral_core::TimeoutKind::Idle);
    assert!(err.to_string().contains("stalled for 5000 ms"), "{err}");
    assert!(
        mark.is_set(),
        "a breaker below counts the stall as the upstream's failure"
    );
    assert!(body.frame().await.is_none(), "and then ends");
    drop(tx);
    assert!(no_more_attempts(&mut handle).await, "not retried");
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_the_wait_for_headers_too() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        total_timeout: Some(Duration::from_secs(10)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    // Not the first byte's 30 s: the whole request's 10 s, and no retry
    // after it (none could finish).
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let timeout = err.downcast_ref::<Timeout>().unwrap();
    assert_eq!(timeout.kind(), corral_core::TimeoutKind::Total);
    assert!(first
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .is_set());
    assert!(no_more_attempts(&mut handle).await);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_without_a_first_byte_in_time_is_marked_and_not_run_again() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = first.extensions().get::<AttemptTimedOut>().unwrap().clone();
    assert!(!mark.is_set());
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert!(err.is::<Timeout>(), "{err}");
    assert!(
        mark.is_set(),
        "the abandoned attempt is marked as timed out"
    );
    // It may have generated to its end: running it again pays twice.
    assert!(no_more_attempts(&mut handle).await, "not run again");
}

#[tokio::test(start_paused = true)]
async fn with_rerun_timed_out_an_attempt_that_timed_out_is_run_again() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        rerun_timed_out: true,
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = first.extensions().get::<AttemptTimedOut>().unwrap().clone();
    let (second, reply) = handle.next_request().await.unwrap();
    assert!(mark.is_set());
    assert!(!second
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .is_set());
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_gateways_504_is_not_run_again_but_a_503_busy_is() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.clone().oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(answer(504));
    assert_eq!(call.await.unwrap().unwrap().status(), 504);
    assert!(no_more_attempts(&mut handle).await);

    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(answer(503));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_non_streamed_generation_has_no_first_byte_limit_and_runs_once() {
    // Ollama sends nothing of a `"stream": false` answer before its last
    // token: a 40 s generation behind a 30 s first-byte limit.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let mut request = request();
    request
        .extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .stream = false;
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(40));
    assert!(no_more_attempts(&mut handle).await, "one upstream call");

    // The total timeout still bounds it.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        total_timeout: Some(Duration::from_secs(60)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let mut request = common::request();
    request
        .extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .stream = false;
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request));
    let _hung = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    assert_eq!(
        err.downcast_ref::<Timeout>().unwrap().kind(),
        corral_core::TimeoutKind::Total
    );
}

#[tokio::test(start_paused = true)]
async fn a_metadata_read_waits_its_own_short_limit_not_a_model_loads() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 1,
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let meta = corral_core::RequestMeta::new("t".into(), corral_core::Endpoint::Tags);
    let mut tags = http::Request::get("/api/tags")
        .body(corral_core::Body::empty())
        .unwrap();
    tags.extensions_mut().insert(meta);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(tags));
    let _hung = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is::<Timeout>(), "{err}");
    assert_eq!(start.elapsed(), corral_retry::DEFAULT_METADATA_TIMEOUT);
}
