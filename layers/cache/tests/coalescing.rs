//! Coalescing of identical requests in flight: one upstream call for
//! many, the same bytes to all, and a call that goes on when its first
//! client leaves and stops when all do.

#![allow(clippy::unwrap_used)] // a test fails by panicking
#![allow(clippy::type_complexity)] // controlled() hands back a cache, its writers and its count

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_cache::{CacheConfig, CacheService};
use corral_core::{Body, BoxError};
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use tokio::sync::mpsc;
use tower::service_fn;
use tower::util::BoxCloneService;

use common::{cache, deterministic, request, send, text, Upstream, STREAMED};

/// The upstream's side of one call: the sender of its answer's body.
type Writer = Sender<Bytes, BoxError>;

/// The default cache over an upstream whose answers the test writes chunk
/// by chunk: the cache, a writer for each upstream call, and the call count.
fn controlled() -> (
    CacheService<Upstream<Channel<Bytes, BoxError>>>,
    mpsc::UnboundedReceiver<Writer>,
    Arc<AtomicUsize>,
) {
    let (senders, receiver) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = service_fn(move |_request: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let (tx, body) = Channel::new(16);
        let _ = senders.send(tx);
        async move {
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert("content-type", "application/x-ndjson".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    let service = cache(&CacheConfig::default(), BoxCloneService::new(upstream));
    (service, receiver, calls)
}

/// Writes `line` and its newline into an upstream answer.
async fn write_line(tx: &mut Writer, line: &str) {
    tx.send_data(Bytes::from(line.to_string() + "\n"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_in_flight_make_one_upstream_call_and_get_the_same_bytes() {
    let (service, mut senders, calls) = controlled();

    let leader = send(&service, deterministic(true)).await;
    let mut tx = senders.recv().await.unwrap();
    write_line(&mut tx, STREAMED.lines().next().unwrap()).await;

    // 49 join while it streams; they get the first chunk too.
    let mut followers = Vec::new();
    for _ in 0..49 {
        followers.push(send(&service, deterministic(true)).await);
    }
    for line in STREAMED.lines().skip(1) {
        write_line(&mut tx, line).await;
    }
    drop(tx);

    let (cache, leader_text) = text(leader).await;
    assert_eq!((cache.as_str(), leader_text.as_str()), ("miss", STREAMED));
    for follower in followers {
        let (cache, follower_text) = text(follower).await;
        assert_eq!(cache, "coalesced");
        assert_eq!(follower_text, leader_text, "byte-identical");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one upstream call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_goes_on_when_the_first_client_leaves_and_stops_when_all_do() {
    let (service, mut senders, calls) = controlled();

    let leader = send(&service, deterministic(true)).await;
    let mut tx = senders.recv().await.unwrap();
    let follower = send(&service, deterministic(true)).await;
    drop(leader);
    for line in STREAMED.lines() {
        write_line(&mut tx, line).await;
    }
    drop(tx);
    let (cache, body) = text(follower).await;
    assert_eq!(
        (cache.as_str(), body.as_str()),
        ("coalesced", STREAMED),
        "the follower got the whole answer"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Everyone leaves mid-stream: the upstream call is dropped.
    let other = r#"{"model":"llama3","prompt":"another","options":{"temperature":0}}"#;
    let only = send(&service, request(other, Some(0.0), true)).await;
    let mut tx = senders.recv().await.unwrap();
    tx.send_data(Bytes::from_static(b"{\"response\":\"x\",\"done\":false}\n"))
        .await
        .unwrap();
    drop(only);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if tx.send_data(Bytes::from_static(b"{}\n")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the upstream body was dropped once nobody listened"
    );
}
