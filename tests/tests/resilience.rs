//! Resilience through the proxy against the simulated Ollama's faults:
//! retries absorb a burst of 503s, a dead upstream opens the breaker and
//! clients get fast 503s with Retry-After, the breaker closes when the
//! upstream returns, a stalled stream ends with an error line, and a
//! failing upstream never sees a retry storm.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_e2e::{
    fast, get, mock, proxy_toml, request_with, send, streaming, upstream_saw, within,
};
use corral_mock_ollama::MockOllama;
use http_body_util::BodyExt;

const RETRY_FAST: &str =
    "[[layers]]\nkind = \"retry\"\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n";

fn generate(
    url: &str,
    id: &str,
    fault: Option<&str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut headers = vec![("x-request-id", id), ("x-mock-id", id)];
    headers.extend(fault.map(|fault| ("x-mock-fault", fault)));
    let body = r#"{"model":"llama3","prompt":"x","stream":false}"#;
    request_with("POST", &format!("{url}/api/generate"), body, &headers)
}

#[tokio::test]
async fn a_burst_of_503s_is_absorbed_by_retries() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(
        &upstream.url(),
        &format!("{RETRY_FAST}[[layers]]\nkind = \"breaker\"\n"),
    )
    .await;
    let reply = send(generate(&corral.url(), "burst-1", Some("busy_attempts=2"))).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["done"], true);
    let attempts = upstream
        .requests()
        .iter()
        .filter(|r| r.headers.get("x-mock-id").map(String::as_str) == Some("burst-1"))
        .count();
    assert_eq!(attempts, 3, "two busy answers, then served");
    assert!(upstream_saw(&upstream, "burst-1")
        .body
        .contains("\"prompt\":\"x\""));
}

#[tokio::test]
async fn a_dead_upstream_opens_the_breaker_and_it_closes_when_the_upstream_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let layers = "[[layers]]\nkind = \"retry\"\nmax_attempts = 1\n\n[[layers]]\nkind = \"breaker\"\nconsecutive_failures = 5\nopen_for = \"400ms\"\n";
    let corral = proxy_toml(&address, layers).await;
    for i in 0..5 {
        let reply = send(generate(&corral.url(), &format!("dead-{i}"), None)).await;
        assert_eq!(reply.status, 502, "the upstream is unreachable");
    }
    let fast_fail = send(generate(&corral.url(), "dead-5", None)).await;
    assert_eq!(fast_fail.status, 503);
    assert_eq!(fast_fail.header("x-corral-reason"), Some("breaker_open"));
    assert_eq!(fast_fail.header("retry-after"), Some("1"));
    assert!(fast_fail.error().contains("circuit breaker open"));

    // The upstream comes back on its address.
    let upstream = MockOllama::bind(address.parse().unwrap(), fast())
        .await
        .unwrap();
    let url = corral.url();
    let recovered = within(async {
        loop {
            let reply = send(generate(&url, "probe", None)).await;
            if reply.status == 200 {
                return reply;
            }
            assert_eq!(
                reply.header("x-corral-reason"),
                Some("breaker_open"),
                "{:?}",
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(recovered.json()["done"], true);
    let after = send(generate(&url, "after", None)).await;
    assert_eq!(after.status, 200, "closed again");
    assert_eq!(upstream.stats().requests, 2);
    let metrics = get(&format!("{url}/metrics")).await;
    let text = metrics.text();
    assert!(
        text.contains("corral_circuit_breaker_transitions_total{breaker=\"upstream\",to=\"open\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_stream_is_ended_by_the_idle_timeout_with_an_error_line() {
    let upstream = mock(streaming(10, 1000.0)).await;
    let corral = proxy_toml(
        &upstream.url(),
        "[[layers]]\nkind = \"retry\"\nidle_timeout = \"300ms\"\n",
    )
    .await;
    let r = request_with(
        "POST",
        &format!("{}/api/chat", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
        &[("x-mock-fault", "stall_after=2")],
    );
    let response = corral_e2e::open(r).await;
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "two chunks, then the error: {text}");
    let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("stalled for 300 ms"),
        "{last}"
    );
}

#[tokio::test]
async fn a_failing_upstream_sees_at_most_the_budgeted_multiple_of_client_requests() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(),
        "[[layers]]\nkind = \"retry\"\ninitial_backoff = \"5ms\"\nmax_backoff = \"20ms\"\nbudget_ratio = 0.2\nbudget_min_per_sec = 1\nbudget_window = \"10s\"\n").await;
    let clients = 100;
    let mut calls = Vec::new();
    for i in 0..clients {
        let url = corral.url();
        calls.push(tokio::spawn(async move {
            send(generate(&url, &format!("storm-{i}"), Some("busy")))
                .await
                .status
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 503);
    }
    let attempts = upstream.stats().requests as usize;
    assert!(attempts > clients, "some retries happened");
    assert!(
        attempts <= clients + clients / 5 + 10,
        "{attempts} upstream attempts for {clients} client requests"
    );
}
