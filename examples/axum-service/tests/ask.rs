//! The example service against the simulated Ollama, over real sockets:
//! it answers, runs one generation at a time whatever comes in, and fails
//! fast with the breaker's answer once Ollama is gone.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_e2e::{mock, request_with, send, streaming};
use corral_example_axum::{app, OllamaClient};
use corral_mock_ollama::MockConfig;

async fn serve(ollama: &str) -> String {
    let client = OllamaClient::new(ollama, 1).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(client)).await });
    format!("http://{addr}")
}

fn ask(url: &str, agent: &str, priority: u8) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let headers = [
        ("content-type", "application/json"),
        ("x-agent-id", agent),
        ("x-priority", &priority.to_string()),
    ];
    let body = r#"{"prompt":"why is the sky blue?"}"#;
    request_with("POST", &format!("{url}/ask"), body, &headers)
}

#[tokio::test]
async fn it_answers_and_runs_one_generation_at_a_time() {
    let upstream = mock(MockConfig {
        ttft: Duration::from_millis(30),
        ..streaming(4, 1000.0)
    })
    .await;
    let url = serve(&upstream.url()).await;
    let asks = (0..4).map(|i| send(ask(&url, &format!("agent-{i}"), 5)));
    let replies = futures_util::future::join_all(asks).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert!(!reply.json()["answer"].as_str().unwrap().is_empty());
    }
    let stats = upstream.stats();
    assert_eq!(stats.completed, 4);
    assert_eq!(stats.peak_in_flight, 1, "the scheduler's one permit");
}

#[tokio::test]
async fn with_ollama_gone_the_breaker_answers_at_once_with_retry_after() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let url = serve(&gone).await;
    // Unreachable: retried within the budget, each attempt counted by
    // the breaker below, which opens after two: the first ask ends with
    // the unreachable upstream's 502 or the breaker's 503.
    let first = send(ask(&url, "a", 5)).await;
    assert!(
        matches!(
            first.header("x-corral-reason"),
            Some("upstream_unreachable" | "breaker_open")
        ),
        "{first:?}"
    );
    let reply = send(ask(&url, "a", 5)).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-corral-reason"), Some("breaker_open"));
    assert!(reply.header("retry-after").is_some());
    assert!(reply.error().contains("breaker"));
}
