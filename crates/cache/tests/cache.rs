//! The cache alone: what is cached and what is not, both forms from one
//! entry, lifetimes and stale answers (time paused), namespaces, and
//! coalescing of identical requests in flight.

#![allow(clippy::unwrap_used)] // a test fails by panicking
#![allow(clippy::type_complexity)] // test upstreams spelled out as impl Service

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_cache::{CacheConfig, CacheLayer, Namespace};
use corral_core::{Body, BoxError, Degradation, Endpoint, GenerationParams, Level, RequestMeta};
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, ServiceExt};

const STREAMED: &str = "{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"Hello\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\" there\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";

fn request(body: &'static str, temperature: Option<f64>, stream: bool) -> Request<Body> {
    let mut meta = RequestMeta::new("r".into(), Endpoint::Generate)
        .with_agent("agent-a".into(), "opus".into(), false)
        .with_model(Some("llama3".into()));
    meta.stream = stream;
    meta.generation = GenerationParams {
        temperature,
        ..GenerationParams::default()
    };
    let mut request = Request::post("/api/generate")
        .body(Body::from(body))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

const DETERMINISTIC: &str = r#"{"model":"llama3","prompt":"hi","options":{"temperature":0}}"#;

/// An upstream that answers every call with the same NDJSON stream and
/// counts its calls.
fn counting() -> (
    impl tower::Service<
            Request<Body>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_request: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::new(Full::new(Bytes::from_static(STREAMED.as_bytes())));
            response
                .headers_mut()
                .insert("content-type", "application/x-ndjson".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    (service, calls)
}

async fn text(response: Response<corral_core::BoxBody>) -> (String, String) {
    let cache = response
        .headers()
        .get("x-corral-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (cache, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_repeated_deterministic_request_is_a_hit_in_whichever_form_it_asks() {
    let (upstream, calls) = counting();
    let service = CacheLayer::new(&CacheConfig::default())
        .unwrap()
        .layer(upstream);

    let (cache, first) = text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((cache.as_str(), first.as_str()), ("miss", STREAMED));
    tokio::task::yield_now().await;

    let (cache, whole) = text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cache, "hit");
    let doc: serde_json::Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(doc["response"], "Hello there");
    assert_eq!(doc["done_reason"], "stop");
    assert_eq!(doc["eval_count"], 2);

    let (cache, streamed) = text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cache, "hit");
    let lines: Vec<serde_json::Value> = streamed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["response"], "Hello there");
    assert_eq!(lines[1]["done"], true);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one upstream call for three requests"
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_deterministic_request_is_never_cached_unless_forced() {
    let (upstream, calls) = counting();
    let service = CacheLayer::new(&CacheConfig::default())
        .unwrap()
        .layer(upstream);
    const WARM: &str = r#"{"model":"llama3","prompt":"hi","options":{"temperature":0.8}}"#;
    for _ in 0..2 {
        let (cache, _) = text(
            service
                .clone()
                .oneshot(request(WARM, Some(0.8), true))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(cache, "bypass");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for expected in ["miss", "hit"] {
        let mut forced = request(WARM, Some(0.8), true);
        forced
            .headers_mut()
            .insert("x-corral-cache", "force".parse().unwrap());
        let (cache, _) = text(service.clone().oneshot(forced).await.unwrap()).await;
        assert_eq!(cache, expected);
        tokio::task::yield_now().await;
    }
    for (name, value) in [("x-corral-cache", "bypass"), ("cache-control", "no-store")] {
        let mut skip = request(DETERMINISTIC, Some(0.0), true);
        skip.headers_mut().insert(name, value.parse().unwrap());
        let (cache, _) = text(service.clone().oneshot(skip).await.unwrap()).await;
        assert_eq!(cache, "bypass", "{name}: {value}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn an_entry_expires_and_is_served_stale_only_when_degradation_allows() {
    let (upstream, calls) = counting();
    let service = CacheLayer::new(&CacheConfig {
        ttl: Duration::from_secs(60),
        stale_for: Duration::from_secs(600),
        ..CacheConfig::default()
    })
    .unwrap()
    .layer(upstream);
    text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), false))
            .await
            .unwrap(),
    )
    .await;
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(61)).await;

    let mut degraded = request(DETERMINISTIC, Some(0.0), false);
    degraded.extensions_mut().insert(Degradation {
        level: Level::L2,
        ttl_factor: 4.0,
        serve_stale: true,
    });
    let (cache, _) = text(service.clone().oneshot(degraded).await.unwrap()).await;
    assert_eq!(cache, "stale");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (cache, _) = text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        cache, "miss",
        "expired, and no degradation to allow stale answers"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_namespace_keeps_each_agent_to_its_own_answers() {
    let (upstream, calls) = counting();
    let service = CacheLayer::new(&CacheConfig {
        namespace: Namespace::Agent,
        ..CacheConfig::default()
    })
    .unwrap()
    .layer(upstream);
    text(
        service
            .clone()
            .oneshot(request(DETERMINISTIC, Some(0.0), true))
            .await
            .unwrap(),
    )
    .await;
    tokio::task::yield_now().await;
    let mut other = request(DETERMINISTIC, Some(0.0), true);
    other
        .extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .agent = "agent-b".into();
    let (cache, _) = text(service.clone().oneshot(other).await.unwrap()).await;
    assert_eq!(cache, "miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An upstream whose answers the test writes, chunk by chunk.
fn controlled() -> (
    impl tower::Service<
            Request<Body>,
            Response = Response<Channel<Bytes, BoxError>>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    mpsc::UnboundedReceiver<Sender<Bytes, BoxError>>,
    Arc<AtomicUsize>,
) {
    let (senders, receiver) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_request: Request<Body>| {
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
    (service, receiver, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_in_flight_make_one_upstream_call_and_get_the_same_bytes() {
    let (upstream, mut senders, calls) = controlled();
    let service = CacheLayer::new(&CacheConfig::default())
        .unwrap()
        .layer(upstream);

    let leader = service
        .clone()
        .oneshot(request(DETERMINISTIC, Some(0.0), true))
        .await
        .unwrap();
    let mut tx = senders.recv().await.unwrap();
    tx.send_data(Bytes::from(
        STREAMED.lines().next().unwrap().to_string() + "\n",
    ))
    .await
    .unwrap();

    // 49 join while it streams; they get the first chunk too.
    let mut followers = Vec::new();
    for _ in 0..49 {
        followers.push(
            service
                .clone()
                .oneshot(request(DETERMINISTIC, Some(0.0), true))
                .await
                .unwrap(),
        );
    }
    for line in STREAMED.lines().skip(1) {
        tx.send_data(Bytes::from(line.to_string() + "\n"))
            .await
            .unwrap();
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
    let (upstream, mut senders, calls) = controlled();
    let service = CacheLayer::new(&CacheConfig::default())
        .unwrap()
        .layer(upstream);

    let leader = service
        .clone()
        .oneshot(request(DETERMINISTIC, Some(0.0), true))
        .await
        .unwrap();
    let mut tx = senders.recv().await.unwrap();
    let follower = service
        .clone()
        .oneshot(request(DETERMINISTIC, Some(0.0), true))
        .await
        .unwrap();
    drop(leader);
    for line in STREAMED.lines() {
        tx.send_data(Bytes::from(line.to_string() + "\n"))
            .await
            .unwrap();
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
    let only = service
        .clone()
        .oneshot(request(other, Some(0.0), true))
        .await
        .unwrap();
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

#[tokio::test(start_paused = true)]
async fn a_seeded_request_is_deterministic_even_when_warm() {
    let (upstream, calls) = counting();
    let service = CacheLayer::new(&CacheConfig::default())
        .unwrap()
        .layer(upstream);
    const SEEDED: &str =
        r#"{"model":"llama3","prompt":"hi","options":{"temperature":0.8,"seed":7}}"#;
    let seeded = || {
        let mut r = request(SEEDED, Some(0.8), true);
        r.extensions_mut()
            .get_mut::<RequestMeta>()
            .unwrap()
            .generation
            .seed = Some(7);
        r
    };
    for expected in ["miss", "hit"] {
        let (cache, _) = text(service.clone().oneshot(seeded()).await.unwrap()).await;
        assert_eq!(cache, expected);
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn past_its_byte_bound_the_cache_lets_entries_go() {
    let (upstream, _calls) = counting();
    // Room for about two answers of STREAMED's size.
    let max_bytes = 2 * (STREAMED.len() as u64 + 64);
    let layer = CacheLayer::new(&CacheConfig {
        max_bytes,
        ..CacheConfig::default()
    })
    .unwrap();
    let service = layer.clone().layer(upstream);
    for prompt in ["a", "b", "c", "d", "e", "f"] {
        let body: &'static str = Box::leak(
            format!(r#"{{"model":"llama3","prompt":"{prompt}","options":{{"temperature":0}}}}"#)
                .into_boxed_str(),
        );
        let (cache, _) = text(
            service
                .clone()
                .oneshot(request(body, Some(0.0), true))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(cache, "miss");
        tokio::task::yield_now().await;
    }
    let (entries, bytes) = layer.store().size();
    assert!(bytes <= max_bytes, "{bytes} bytes held, bound {max_bytes}");
    assert!((1..6).contains(&entries), "{entries} of 6 entries held");
}
