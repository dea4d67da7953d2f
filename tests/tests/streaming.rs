//! Streams pass through unbuffered, and a client that leaves cancels the
//! upstream request at once.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_e2e::{
    eventually, eventually_async, fast_proxy, get, mock, open, proxy, proxy_with, request,
    request_with, stalled, streaming, upstream_until, within,
};
use corral_mock_ollama::{MockConfig, MockOllama};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::task::JoinHandle;

/// `POST url` with `body` from a client of its own, its answer left
/// unread: abort the task and the client leaves.
fn asking(
    url: &str,
    body: &'static str,
) -> JoinHandle<Result<http::Response<Incoming>, hyper_util::client::legacy::Error>> {
    let ask = corral_e2e::client().request(request("POST", url, body));
    tokio::spawn(ask)
}

/// An upstream generating `parallel` at once, each for a minute: whoever
/// comes next waits.
fn stalled_with_room_for(parallel: usize) -> MockConfig {
    MockConfig {
        parallel,
        ..stalled(Duration::from_secs(60))
    }
}

/// Waits until the upstream has seen its client leave and freed the slot.
async fn the_upstream_lets_go(upstream: &MockOllama) {
    upstream_until(upstream, "the upstream sees its client leave", |s| {
        s.cancelled == 1
    })
    .await;
    upstream_until(upstream, "the upstream frees the slot", |s| {
        s.in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn a_chunk_reaches_the_client_before_the_upstream_produces_the_next() {
    let (upstream, corral) = fast_proxy().await;
    // The upstream sends one chunk, then waits until the test releases it.
    let req = request_with(
        "POST",
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"tell me"}"#,
        &[("x-mock-fault", "pause_after=1")],
    );
    let mut body = open(req).await.into_body();

    let first = within(body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    let first = first.into_data().expect("data");
    let line: serde_json::Value = serde_json::from_slice(&first).expect("one whole NDJSON line");
    assert_eq!(line["done"], false);
    // The upstream is still holding the second chunk back: what the client
    // read cannot have waited for it.
    let stats = upstream.stats();
    assert_eq!(
        stats.paused, 1,
        "the upstream is paused after its first chunk"
    );
    assert_eq!(stats.chunks_sent, 1);

    upstream.release(1);
    let mut rest = Vec::new();
    while let Some(frame) = within(body.frame()).await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    let lines: Vec<&str> = std::str::from_utf8(&rest).unwrap().lines().collect();
    assert_eq!(lines.len(), 8, "7 more tokens and the done message");
    assert!(lines.last().unwrap().contains("\"done\":true"));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_generation() {
    let upstream = mock(streaming(1000, 20.0)).await;
    let corral = proxy(&upstream.url()).await;
    let response = open(request(
        "POST",
        &format!("{}/api/chat", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"a long story"}]}"#,
    ))
    .await;
    let mut body = response.into_body();
    within(body.frame()).await.expect("first token").unwrap();
    assert_eq!(upstream.stats().in_flight, 1);

    drop(body);
    the_upstream_lets_go(&upstream).await;
    let stats = upstream.stats();
    assert!(
        stats.chunks_sent < 1000,
        "generation stopped early: {}",
        stats.chunks_sent
    );
    assert_eq!(stats.completed, 0);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_first_token_cancels_the_upstream_request() {
    let upstream = mock(stalled(Duration::from_secs(60))).await;
    let corral = proxy(&upstream.url()).await;
    let url = format!("{}/api/generate", corral.url());
    let waiting = asking(&url, r#"{"model":"llama3","prompt":"slow"}"#);
    upstream_until(&upstream, "the upstream is generating", |s| {
        s.in_flight == 1
    })
    .await;

    waiting.abort();
    the_upstream_lets_go(&upstream).await;
}

#[tokio::test]
async fn a_client_that_leaves_while_the_upstream_queues_it_leaves_the_upstream_queue() {
    let upstream = mock(stalled_with_room_for(1)).await;
    // A bare pass-through: the upstream's own queue holds the second.
    let corral = proxy_with(&upstream.url(), |c| c.layers = Some(vec![])).await;
    let url = format!("{}/api/generate", corral.url());
    let first = asking(&url, r#"{"model":"llama3","prompt":"x"}"#);
    eventually("the first generates", || upstream.stats().in_flight == 1).await;
    let second = asking(&url, r#"{"model":"llama3","prompt":"x"}"#);
    eventually("the second waits upstream", || upstream.stats().queued == 1).await;

    second.abort();
    upstream_until(&upstream, "the upstream queue empties", |s| s.queued == 0).await;
    first.abort();
    eventually("both cancelled", || upstream.stats().cancelled == 2).await;
}

#[tokio::test]
async fn through_the_default_stack_a_client_that_leaves_while_queued_never_reaches_the_upstream() {
    let upstream = mock(stalled_with_room_for(4)).await;
    // No config: one request at a time per model, as Ollama's default.
    let corral = proxy(&upstream.url()).await;
    let url = format!("{}/api/generate", corral.url());
    let first = asking(&url, r#"{"model":"llama3","prompt":"x"}"#);
    eventually("the first generates", || upstream.stats().in_flight == 1).await;
    let second = asking(&url, r#"{"model":"llama3","prompt":"x"}"#);
    let status = format!("{}/corral/status", corral.url());
    let queued = || async { get(&status).await.json()["queued"].clone() };
    eventually_async("the second waits in corral", || async {
        queued().await == 1
    })
    .await;
    assert_eq!(upstream.requests().len(), 1, "the upstream sees one");

    second.abort();
    eventually_async("corral's queue empties", || async { queued().await == 0 }).await;
    first.abort();
    upstream_until(&upstream, "the first is cancelled upstream", |s| {
        s.cancelled == 1
    })
    .await;
    assert_eq!(upstream.requests().len(), 1, "the second never went");
}
