//! Predictable waits through the proxy, on real sockets: a waiting
//! request is found by its id with its place and wait, an answer says
//! where it stood, and a deadline the queue cannot meet is refused at
//! once, in the client's shape, with `Retry-After` from the same estimate.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_e2e::{eventually, get, mock, request_with, send};
use corral_mock_ollama::MockConfig;

fn generate(
    url: &str,
    id: &str,
    extra: &[(&str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut headers = vec![("x-agent-id", id), ("x-request-id", id)];
    headers.extend_from_slice(extra);
    request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"hi","stream":false}"#,
        &headers,
    )
}

#[tokio::test]
async fn waits_are_told_and_a_deadline_out_of_reach_is_refused_at_arrival() {
    // Each answer takes about 400 ms; one at a time.
    let upstream = mock(MockConfig {
        ttft: Duration::from_millis(300),
        tokens: 10,
        tokens_per_sec: 100.0,
        ..MockConfig::default()
    })
    .await;
    let corral = corral_e2e::proxy_toml(
        &upstream.url(),
        "capacity = 1\n[[layers]]\nkind = \"priority\"\n",
    )
    .await;
    let url = corral.url();
    // Teach it how long answers hold the permit.
    for i in 0..3 {
        let reply = send(generate(&url, &format!("teach-{i}"), &[])).await;
        assert_eq!(reply.status, 200);
    }
    // One runs, two wait.
    let mut calls = Vec::new();
    let spawn = |id: &'static str| {
        let url = url.clone();
        tokio::spawn(async move { send(generate(&url, id, &[])).await })
    };
    calls.push(spawn("run"));
    eventually("one runs", || upstream.stats().in_flight == 1).await;
    calls.push(spawn("wait-1"));
    corral_e2e::eventually_async("wait-1 waits", || async {
        get(&format!("{url}/corral/requests/wait-1")).await.status == 200
    })
    .await;
    calls.push(spawn("wait-2"));
    // Listed as waiting, behind wait-1.
    let mut seen = serde_json::Value::Null;
    for _ in 0..500 {
        let reply = get(&format!("{url}/corral/requests/wait-2")).await;
        if reply.status == 200 {
            seen = reply.json();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen["position"], 1, "{seen}");
    assert_eq!(seen["state"], "queued");
    assert_eq!(seen["agent"], "wait-2");
    let eta = seen["eta_ms"].as_u64().unwrap();
    assert!(eta > 0, "{seen}");
    // A deadline nearer than the wait: refused now, in Ollama's shape.
    let reply = send(generate(&url, "hurried", &[("x-deadline-ms", "50")])).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.headers["x-corral-reason"], "deadline_unreachable");
    assert!(reply.headers.contains_key("retry-after"));
    assert!(reply.headers.contains_key("x-corral-queue-eta-ms"));
    assert!(reply.json()["error"].as_str().unwrap().contains("deadline"));
    // The others are served, each answer saying where it stood.
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains_key("x-corral-queue-position"));
    }
    let gone = get(&format!("{url}/corral/requests/wait-2")).await;
    assert_eq!(gone.status, 404);
    // A deadline as far as a client may ask is none: served.
    let far = u64::MAX.to_string();
    let reply = send(generate(&url, "far", &[("x-deadline-ms", &far)])).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_deadline_that_passes_in_the_queue_is_answered_504_with_the_time_it_waited() {
    let upstream = mock(MockConfig::default()).await;
    let corral = corral_e2e::proxy_toml(
        &upstream.url(),
        "capacity = 1\n[[layers]]\nkind = \"priority\"\n",
    )
    .await;
    let url = corral.url();
    // The only permit, held for 2 s; nothing measured yet, so the next
    // request is let in and waits.
    let running = {
        let url = url.clone();
        tokio::spawn(async move {
            send(generate(&url, "run", &[("x-mock-fault", "ttft_ms=2000")])).await
        })
    };
    eventually("one runs", || upstream.stats().in_flight == 1).await;
    let reply = send(generate(&url, "late", &[("x-deadline-ms", "300")])).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.headers["x-corral-reason"], "deadline_exceeded");
    let waited: u64 = reply.headers["x-corral-queue-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((300..2_000).contains(&waited), "waited {waited} ms");
    assert_eq!(running.await.unwrap().status, 200);
}
