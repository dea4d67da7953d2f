//! The simulated Ollama behaves like a loaded GPU server: parallel slots
//! per model, a bounded queue with Ollama's 503, model loads, faults.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{call, fast};
use corral_mock_ollama::{MockConfig, MockOllama, BUSY_MESSAGE};

/// Posts `body` to `url` with the fault header if given: the status and
/// the body, read to its end or to where it broke.
async fn post(url: String, body: &'static str, fault: Option<&'static str>) -> (u16, String) {
    let reply = call(&url, body, fault).await;
    (reply.status, reply.text())
}

const GENERATE: &str = r#"{"model":"llama3","prompt":"x","stream":false}"#;

#[tokio::test]
async fn no_more_than_parallel_requests_generate_at_once_and_the_queue_is_bounded() {
    let mock = MockOllama::start(MockConfig {
        parallel: 2,
        max_queue: 3,
        ttft: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/api/generate", mock.url());
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(post(url.clone(), GENERATE, None)))
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                busy += 1;
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], BUSY_MESSAGE);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let stats = mock.stats();
    assert_eq!(
        (ok, busy),
        (5, 3),
        "2 generating + 3 waiting are served, the rest refused"
    );
    assert_eq!(stats.peak_in_flight, 2);
    assert_eq!(stats.peak_queued, 3);
    assert_eq!(stats.busy_rejections, 3);
}

#[tokio::test]
async fn each_model_has_its_own_slots_and_loading_another_evicts_the_oldest() {
    let mock = MockOllama::start(MockConfig {
        parallel: 1,
        max_loaded_models: 1,
        load_time: Duration::from_millis(50),
        ttft: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/api/generate", mock.url());
    let a = tokio::spawn(post(url.clone(), GENERATE, None));
    let b = tokio::spawn(post(
        url.clone(),
        r#"{"model":"tinyllama","prompt":"x","stream":false}"#,
        None,
    ));
    assert_eq!(a.await.unwrap().0, 200);
    assert_eq!(b.await.unwrap().0, 200);
    let stats = mock.stats();
    assert_eq!(stats.peak_in_flight, 2, "one slot per model");
    assert_eq!(stats.model_loads, 2);
    assert_eq!(stats.model_evictions, 1);

    let (_, body) = post(url, GENERATE, None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["load_duration"].as_u64().unwrap() >= 50_000_000,
        "{json}"
    );
}

#[tokio::test]
async fn faults_by_header_answer_as_asked() {
    let mock = MockOllama::start(MockConfig::default()).await.unwrap();
    let url = format!("{}/api/generate", mock.url());
    assert_eq!(post(url.clone(), GENERATE, Some("status=500")).await.0, 500);
    let (status, body) = post(url.clone(), GENERATE, Some("busy")).await;
    assert_eq!((status, body.contains("server busy")), (503, true));
    let (status, _) = post(url.clone(), GENERATE, Some("explode")).await;
    assert_eq!(status, 400, "unknown faults are refused, not ignored");

    let started = tokio::time::Instant::now();
    assert_eq!(
        post(url.clone(), GENERATE, Some("slow_headers_ms=200"))
            .await
            .0,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let (status, body) = post(
        url,
        r#"{"model":"llama3","prompt":"x"}"#,
        Some("drop_after=2"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("\"done\":true"),
        "the stream was cut: {body}"
    );
    assert_eq!(mock.stats().faults_injected, 4);
}

#[tokio::test]
async fn an_error_rate_fails_about_that_share_of_requests_and_repeats_with_its_seed() {
    let run = || async {
        let mock = MockOllama::start(MockConfig {
            error_rate: 0.3,
            ..fast()
        })
        .await
        .unwrap();
        let url = format!("{}/api/generate", mock.url());
        let mut statuses = Vec::new();
        for _ in 0..100 {
            statuses.push(post(url.clone(), GENERATE, None).await.0);
        }
        statuses
    };
    let first = run().await;
    let failed = first.iter().filter(|s| **s == 500).count();
    assert!((15..=45).contains(&failed), "{failed}");
    assert_eq!(first, run().await, "the same seed injects the same faults");
}

#[tokio::test]
async fn a_short_num_predict_ends_with_length() {
    let mock = MockOllama::start(MockConfig::default()).await.unwrap();
    let (_, body) = post(
        format!("{}/api/generate", mock.url()),
        r#"{"model":"llama3","prompt":"x","stream":false,"options":{"num_predict":3}}"#,
        None,
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["eval_count"], 3);
    assert_eq!(json["done_reason"], "length");
}

#[tokio::test]
async fn a_model_can_generate_at_a_rate_of_its_own() {
    let mock = MockOllama::start(MockConfig {
        ttft: Duration::ZERO,
        tokens_per_sec: 50.0,
        model_tokens_per_sec: [("tinyllama".to_string(), 5000.0)].into(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let eval = |body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["eval_count"], 5, "{body}");
        v["eval_duration"].as_u64().unwrap()
    };
    let (status, big) = post(
        format!("{}/api/generate", mock.url()),
        r#"{"model":"llama3","prompt":"x","stream":false,"options":{"num_predict":5}}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, small) = post(
        format!("{}/api/generate", mock.url()),
        r#"{"model":"tinyllama:latest","prompt":"x","stream":false,"options":{"num_predict":5}}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // 5 tokens at 50/s against 5 tokens at 5000/s.
    assert_eq!(eval(&big), 100_000_000);
    assert_eq!(eval(&small), 1_000_000);
}

#[tokio::test]
async fn set_parallel_stands_for_a_restart_with_another_num_parallel() {
    let mock = MockOllama::start(MockConfig {
        parallel: 2,
        ttft: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/api/generate", mock.url());
    let run = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| tokio::spawn(post(url.clone(), GENERATE, None)))
            .collect()
    };

    // Up: four generate at once.
    mock.set_parallel(4);
    for call in run(4) {
        assert_eq!(call.await.unwrap().0, 200);
    }
    assert_eq!(
        (mock.stats().peak_in_flight, mock.stats().peak_queued),
        (4, 0)
    );

    // Down while four generate (through the route): they finish in their
    // slots; the two that come meanwhile run one at a time.
    mock.reset();
    let busy = run(4);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = call(&format!("{}/mock/parallel?n=1", mock.url()), "", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.parallel(), 1);
    let started = tokio::time::Instant::now();
    let late = run(2);
    for call in busy.into_iter().chain(late) {
        assert_eq!(call.await.unwrap().0, 200);
    }
    let stats = mock.stats();
    assert_eq!((stats.peak_in_flight, stats.peak_queued), (4, 2));
    assert!(
        started.elapsed() >= Duration::from_millis(2 * 300 + 150),
        "the late two waited for the four, then ran in turn: {:?}",
        started.elapsed()
    );
}
