//! The cache alone: what is cached and what is not, both forms from one
//! entry, lifetimes and stale answers (time paused), namespaces, and the
//! byte bound. Coalescing is in `coalescing.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use corral_cache::{CacheConfig, CacheLayer, Namespace};
use corral_core::{Degradation, Level, RequestMeta};
use tower::Layer;

use common::{ask, cache, counting, deterministic, request, STREAMED};

#[tokio::test(start_paused = true)]
async fn a_repeated_deterministic_request_is_a_hit_in_whichever_form_it_asks() {
    let (upstream, calls) = counting();
    let service = cache(&CacheConfig::default(), upstream);

    let (cache, first) = ask(&service, deterministic(true)).await;
    assert_eq!((cache.as_str(), first.as_str()), ("miss", STREAMED));
    tokio::task::yield_now().await;

    let (cache, whole) = ask(&service, deterministic(false)).await;
    assert_eq!(cache, "hit");
    let doc: serde_json::Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(doc["response"], "Hello there");
    assert_eq!(doc["done_reason"], "stop");
    assert_eq!(doc["eval_count"], 2);

    let (cache, streamed) = ask(&service, deterministic(true)).await;
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
    let service = cache(&CacheConfig::default(), upstream);
    const WARM: &str = r#"{"model":"llama3","prompt":"hi","options":{"temperature":0.8}}"#;
    for _ in 0..2 {
        let (cache, _) = ask(&service, request(WARM, Some(0.8), true)).await;
        assert_eq!(cache, "bypass");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for expected in ["miss", "hit"] {
        let mut forced = request(WARM, Some(0.8), true);
        forced
            .headers_mut()
            .insert("x-corral-cache", "force".parse().unwrap());
        let (cache, _) = ask(&service, forced).await;
        assert_eq!(cache, expected);
        tokio::task::yield_now().await;
    }
    for (name, value) in [("x-corral-cache", "bypass"), ("cache-control", "no-store")] {
        let mut skip = deterministic(true);
        skip.headers_mut().insert(name, value.parse().unwrap());
        let (cache, _) = ask(&service, skip).await;
        assert_eq!(cache, "bypass", "{name}: {value}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn an_entry_expires_and_is_served_stale_only_when_degradation_allows() {
    let (upstream, calls) = counting();
    let config = CacheConfig {
        ttl: Duration::from_secs(60),
        stale_for: Duration::from_secs(600),
        ..CacheConfig::default()
    };
    let service = cache(&config, upstream);
    ask(&service, deterministic(false)).await;
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(61)).await;

    let mut degraded = deterministic(false);
    degraded.extensions_mut().insert(Degradation {
        level: Level::L2,
        ttl_factor: 4.0,
        serve_stale: true,
    });
    let (cache, _) = ask(&service, degraded).await;
    assert_eq!(cache, "stale");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (cache, _) = ask(&service, deterministic(false)).await;
    assert_eq!(
        cache, "miss",
        "expired, and no degradation to allow stale answers"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_namespace_keeps_each_agent_to_its_own_answers() {
    let (upstream, calls) = counting();
    let config = CacheConfig {
        namespace: Namespace::Agent,
        ..CacheConfig::default()
    };
    let service = cache(&config, upstream);
    ask(&service, deterministic(true)).await;
    tokio::task::yield_now().await;
    let mut other = deterministic(true);
    other
        .extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .agent = "agent-b".into();
    let (cache, _) = ask(&service, other).await;
    assert_eq!(cache, "miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_seeded_request_is_deterministic_even_when_warm() {
    let (upstream, calls) = counting();
    let service = cache(&CacheConfig::default(), upstream);
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
        let (cache, _) = ask(&service, seeded()).await;
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
        let (cache, _) = ask(&service, request(body, Some(0.0), true)).await;
        assert_eq!(cache, "miss");
        tokio::task::yield_now().await;
    }
    let (entries, bytes) = layer.store().size();
    assert!(bytes <= max_bytes, "{bytes} bytes held, bound {max_bytes}");
    assert!((1..6).contains(&entries), "{entries} of 6 entries held");
}
