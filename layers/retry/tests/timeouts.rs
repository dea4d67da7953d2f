//! The retry layer's timeouts, with time paused: the first byte (never on
//! a non-streamed generation, and no second run after it by default), the
//! whole request, and a stream that stalls (ended with a typed error,
//! never retried).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use bytes::Bytes;
use corral_core::{AttemptTimedOut, Body, Endpoint, RequestMeta, Timeout, TimeoutKind};
use corral_retry::RetryConfig;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;

use common::{
    answer, answer_with, config, hang, no_more_attempts, request, request_where, retrying, send,
    spawn_call, status_of,
};

/// An attempt's timed-out mark, set once the layer gives up on it.
fn timed_out_mark(attempt: &Request<Body>) -> AttemptTimedOut {
    attempt
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .clone()
}

/// A first-byte limit of 30 s over the shared test config.
fn first_byte_in_30s() -> RetryConfig {
    RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    }
}

/// A non-streamed generate request.
fn whole() -> Request<Body> {
    request_where(|meta| meta.stream = false)
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_started_is_never_retried_and_a_stall_ends_it_with_a_timeout_error() {
    let mut idle_for_5s = config();
    idle_for_5s.idle_timeout = Some(Duration::from_secs(5));
    let (call, mut handle) = send(idle_for_5s, request());
    let (attempt, reply) = handle.next_request().await.unwrap();
    let mark = timed_out_mark(&attempt);
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
    assert_eq!(timeout.kind(), TimeoutKind::Idle);
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
    let config = RetryConfig {
        total_timeout: Some(Duration::from_secs(10)),
        ..first_byte_in_30s()
    };
    let (call, mut handle) = send(config, request());
    let start = Instant::now();
    let (first, _hung) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    // Not the first byte's 30 s: the whole request's 10 s, and no retry
    // after it (none could finish).
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let timeout = err.downcast_ref::<Timeout>().unwrap();
    assert_eq!(timeout.kind(), TimeoutKind::Total);
    assert!(timed_out_mark(&first).is_set());
    assert!(no_more_attempts(&mut handle).await);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_without_a_first_byte_in_time_is_marked_and_not_run_again() {
    let (call, mut handle) = send(first_byte_in_30s(), request());
    let start = Instant::now();
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = timed_out_mark(&first);
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
    let config = RetryConfig {
        rerun_timed_out: true,
        ..first_byte_in_30s()
    };
    let (call, mut handle) = send(config, request());
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = timed_out_mark(&first);
    let (second, reply) = handle.next_request().await.unwrap();
    assert!(mark.is_set());
    assert!(!timed_out_mark(&second).is_set());
    reply.send_response(answer(200));
    assert_eq!(status_of(call).await, 200);
}

#[tokio::test(start_paused = true)]
async fn a_gateways_504_is_not_run_again_but_a_503_busy_is() {
    let (call, mut handle) = send(config(), request());
    answer_with(&mut handle, &[504]).await;
    assert_eq!(status_of(call).await, 504);
    assert!(no_more_attempts(&mut handle).await);

    let (call, mut handle) = send(config(), request());
    answer_with(&mut handle, &[503, 200]).await;
    assert_eq!(status_of(call).await, 200);
}

#[tokio::test(start_paused = true)]
async fn a_non_streamed_generation_has_no_first_byte_limit_and_runs_once() {
    // Ollama sends nothing of a `"stream": false` answer before its last
    // token: a 40 s generation behind a 30 s first-byte limit.
    let (service, mut handle) = retrying(first_byte_in_30s());
    let start = Instant::now();
    let call = spawn_call(service, whole());
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    reply.send_response(answer(200));
    assert_eq!(status_of(call).await, 200);
    assert_eq!(start.elapsed(), Duration::from_secs(40));
    assert!(no_more_attempts(&mut handle).await, "one upstream call");

    // The total timeout still bounds it.
    let config = RetryConfig {
        total_timeout: Some(Duration::from_secs(60)),
        ..first_byte_in_30s()
    };
    let (call, mut handle) = send(config, whole());
    let (err, took) = hang(call, &mut handle).await;
    assert_eq!(took, Duration::from_secs(60));
    assert_eq!(
        err.downcast_ref::<Timeout>().unwrap().kind(),
        TimeoutKind::Total
    );
}

#[tokio::test(start_paused = true)]
async fn a_metadata_read_waits_its_own_short_limit_not_a_model_loads() {
    let config = RetryConfig {
        max_attempts: 1,
        ..config()
    };
    let meta = RequestMeta::new("t".into(), Endpoint::Tags);
    let mut tags = Request::get("/api/tags").body(Body::empty()).unwrap();
    tags.extensions_mut().insert(meta);
    let (call, mut handle) = send(config, tags);
    let (err, took) = hang(call, &mut handle).await;
    assert!(err.is::<Timeout>(), "{err}");
    assert_eq!(took, corral_retry::DEFAULT_METADATA_TIMEOUT);
}
