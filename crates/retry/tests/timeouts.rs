//! The retry layer's timeouts, with time paused: the first byte, the whole
//! request, and a stream that stalls (ended with an error line or event,
//! never retried).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use bytes::Bytes;
use corral_core::{AttemptTimedOut, Body, Endpoint, RequestMeta, Timeout};
use corral_retry::RetryConfig;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use common::{answer, config, layer, no_more_attempts, request, Upstream};

#[tokio::test(start_paused = true)]
async fn a_stream_that_started_is_never_retried_and_a_stall_ends_it_with_an_error_line() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        idle_timeout: Some(Duration::from_secs(5)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
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
    // The upstream stalls: after 5 s the stream ends with an error line.
    let started = Instant::now();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let line: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("stalled for 5000 ms"),
        "{line}"
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
async fn an_attempt_without_a_first_byte_in_time_is_marked_and_retried() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = first.extensions().get::<AttemptTimedOut>().unwrap().clone();
    assert!(!mark.is_set());
    let (second, reply) = handle.next_request().await.unwrap();
    assert!(
        mark.is_set(),
        "the abandoned attempt is marked as timed out"
    );
    assert!(!second
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .is_set());
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // Every attempt hangs: the client gets a 504 timeout.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 2,
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let _a = handle.next_request().await.unwrap();
    let _b = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is::<Timeout>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_openai_stream_that_stalls_ends_with_an_error_event() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        idle_timeout: Some(Duration::from_secs(5)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let meta = RequestMeta::new("r".into(), Endpoint::OpenAiChat).with_model(Some("llama3".into()));
    let mut request = Request::post("/v1/chat/completions")
        .body(Body::from(
            r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ))
        .unwrap();
    request.extensions_mut().insert(meta);
    let call = tokio::spawn(service.oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    let (mut tx, body) = Channel::new(4);
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    tx.send_data(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    let started = Instant::now();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let text = std::str::from_utf8(&last).unwrap();
    let event = text
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("an SSE event: {text:?}"))
        .trim_end();
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled for 5000 ms"),
        "{event}"
    );
    assert!(body.frame().await.is_none(), "and then ends");
    drop(tx);
}
