//! The cache through the proxy: 50 identical deterministic requests in
//! flight make one upstream call and get byte-identical answers (streamed
//! and not); a repeated request is a hit with no upstream call; a
//! non-deterministic request is never cached.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral::Config;
use corral_e2e::{fast, mock, post, request_with, send, streaming, within};

fn config(upstream: &str) -> Config {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n\n[[layers]]\nkind = \"cache\"\n\n[[layers]]\nkind = \"priority\"\n");
    Config::parse(&text, std::path::Path::new("cache.toml")).unwrap()
}

async fn coalesced(url: &str) -> u64 {
    corral_e2e::metric_sum(url, "corral_cache_coalesced_total ").await as u64
}

async fn herd_of_identical(stream: bool, fault: &'static str) {
    let upstream = mock(streaming(12, 1000.0)).await;
    let corral = corral::Running::start(&config(&upstream.url()))
        .await
        .unwrap();
    let url = corral.url();
    let before = coalesced(&url).await;
    let body = format!(
        r#"{{"model":"llama3","prompt":"the same question","stream":{stream},"options":{{"temperature":0}}}}"#
    );
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (url, body) = (url.clone(), body.clone());
        calls.push(tokio::spawn(async move {
            let r = request_with(
                "POST",
                &format!("{url}/api/generate"),
                body,
                &[("x-mock-fault", fault)],
            );
            send(r).await
        }));
    }
    within(async {
        while coalesced(&url).await < before + 49 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // Let the one upstream call go on (a paused stream waits for this).
    upstream.release(1);
    let mut bodies = Vec::new();
    let mut labels = Vec::new();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200);
        labels.push(reply.header("x-corral-cache").unwrap().to_string());
        bodies.push(reply.body);
    }
    assert_eq!(upstream.stats().requests, 1, "exactly one upstream call");
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "all 50 got the same bytes"
    );
    assert_eq!(labels.iter().filter(|l| *l == "miss").count(), 1);
    assert_eq!(labels.iter().filter(|l| *l == "coalesced").count(), 49);

    // Asked again: a hit, no upstream call.
    let again = request_with(
        "POST",
        &format!("{url}/api/generate"),
        body.clone(),
        &[("x-mock-fault", fault)],
    );
    let again = send(again).await;
    assert_eq!(again.header("x-corral-cache"), Some("hit"));
    assert_eq!(upstream.stats().requests, 1);
}

#[tokio::test]
async fn fifty_identical_streamed_requests_make_one_upstream_call() {
    herd_of_identical(true, "pause_after=1").await;
}

#[tokio::test]
async fn fifty_identical_whole_requests_make_one_upstream_call() {
    herd_of_identical(false, "ttft_ms=1500").await;
}

#[tokio::test]
async fn a_non_deterministic_request_is_never_cached() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url()))
        .await
        .unwrap();
    for _ in 0..3 {
        let reply = post(&format!("{}/api/chat", corral.url()), r#"{"model":"llama3","messages":[{"role":"user","content":"be creative"}],"stream":false,"options":{"temperature":0.9}}"#)
        .await;
        assert_eq!(reply.header("x-corral-cache"), Some("bypass"));
    }
    assert_eq!(upstream.stats().requests, 3);

    // Embeddings are always cached, across both forms of the API.
    for expected in ["miss", "hit"] {
        let reply = post(
            &format!("{}/api/embed", corral.url()),
            r#"{"model":"nomic-embed-text","input":["a","b"]}"#,
        )
        .await;
        assert_eq!(reply.header("x-corral-cache"), Some(expected));
        assert_eq!(reply.json()["embeddings"].as_array().unwrap().len(), 2);
    }
    assert_eq!(upstream.stats().requests, 4);
}

#[tokio::test]
async fn thirty_two_concurrent_embeds_are_batched_and_each_gets_its_own_vector() {
    let upstream = mock(fast()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n\n[[layers]]\nkind = \"batch\"\nwindow = \"20ms\"\n",
        upstream.url()
    );
    let corral =
        corral::Running::start(&Config::parse(&text, std::path::Path::new("batch.toml")).unwrap())
            .await
            .unwrap();
    let mut calls = Vec::new();
    for i in 0..32 {
        let url = corral.url();
        calls.push(tokio::spawn(async move {
            let body = format!(r#"{{"model":"nomic-embed-text","input":"sentence {i}"}}"#);
            post(&format!("{url}/api/embed"), body).await
        }));
    }
    let mut vectors = Vec::new();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200);
        vectors.push(reply.json()["embeddings"][0].clone());
    }
    let upstream_calls = upstream.stats().requests;
    assert!(
        upstream_calls <= 4,
        "32 callers cost {upstream_calls} upstream calls"
    );

    // Each vector is the one the upstream computes for that input alone.
    for (i, got) in vectors.iter().enumerate() {
        let direct = post(
            &format!("{}/api/embed", upstream.url()),
            format!(r#"{{"model":"nomic-embed-text","input":"sentence {i}"}}"#),
        )
        .await;
        assert_eq!(got, &direct.json()["embeddings"][0], "sentence {i}");
    }
}
