//! The retry layer alone, with time paused: what is retried and what is
//! not, the backoff schedule, Retry-After, deadlines, the budget under a
//! storm, and the fallback chain. Timeouts are in `timeouts.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_core::UpstreamFailed;
use corral_retry::RetryConfig;
use http_body_util::BodyExt;
use tokio::time::Instant;

mod common;

use common::{
    answer, answer_with, busy, config, no_more_attempts, request, request_where, retrying, send,
    spawn_call, status_of, BODY,
};

#[tokio::test(start_paused = true)]
async fn a_burst_of_503s_is_absorbed_and_the_body_is_replayed_each_time() {
    let (call, mut handle) = send(config(), request());
    let seen = answer_with(&mut handle, &[503, 503, 200]).await;
    assert_eq!(status_of(call).await, 200);
    assert!(
        seen.iter().all(|(_, body)| body == BODY),
        "the same bytes every time"
    );
}

/// Full jitter, exactly: each wait is its ceiling (2 s doubling, capped
/// at 30 s) times the next draw of the thread's generator, which the test
/// seeds (the runtime is single-threaded: the layer draws from it).
#[tokio::test(start_paused = true)]
async fn the_backoff_is_full_jitter_under_a_ceiling_that_doubles_up_to_its_cap() {
    let config = RetryConfig {
        max_attempts: 7,
        ..config()
    };
    fastrand::seed(131);
    let (call, mut handle) = send(config, request());
    let seen = answer_with(&mut handle, &[503; 7]).await;
    assert_eq!(status_of(call).await, 503);
    let waits: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let mut draws = fastrand::Rng::with_seed(131);
    let expected: Vec<Duration> = [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        .iter()
        .map(|ceiling| Duration::from_secs_f64(*ceiling).mul_f64(draws.f64()))
        .collect();
    for (wait, expected) in waits.iter().zip(&expected) {
        // Paused time moves in whole milliseconds.
        assert!(
            wait.abs_diff(*expected) <= Duration::from_millis(1),
            "{waits:?} against {expected:?}"
        );
    }
    assert_eq!(waits.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_retry_after_is_waited_out() {
    let (call, mut handle) = send(config(), request());
    let (_, reply) = handle.next_request().await.unwrap();
    let first = Instant::now();
    reply.send_response(busy("7"));
    let seen = answer_with(&mut handle, &[200]).await;
    assert_eq!(seen[0].0 - first, Duration::from_secs(7));
    assert_eq!(status_of(call).await, 200);
}

#[tokio::test(start_paused = true)]
async fn client_errors_and_500s_are_never_retried() {
    for status in [400, 404, 429, 500] {
        let (call, mut handle) = send(config(), request());
        answer_with(&mut handle, &[status]).await;
        assert_eq!(status_of(call).await, status);
        tokio::task::yield_now().await;
        assert!(no_more_attempts(&mut handle).await, "{status} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_error_is_retried() {
    // A connection refused, and one that breaks before any answer (the
    // upstream died while loading a model): both are sent again.
    for (connect, error) in [
        (true, "connection refused"),
        (false, "connection reset by peer"),
    ] {
        let (call, mut handle) = send(config(), request());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(UpstreamFailed::new("http://x", connect, error));
        answer_with(&mut handle, &[200]).await;
        assert_eq!(status_of(call).await, 200, "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_cannot_finish_before_the_deadline() {
    let config = RetryConfig {
        initial_backoff: Duration::from_secs(10),
        ..config()
    };
    let late = request_where(|meta| {
        meta.deadline = Some(Instant::now() + Duration::from_millis(1));
    });
    let (call, mut handle) = send(config, late);
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    reply.send_response(answer(503));
    assert_eq!(status_of(call).await, 503);
    assert!(no_more_attempts(&mut handle).await);
}

#[tokio::test(start_paused = true)]
async fn under_a_storm_the_budget_bounds_what_the_upstream_sees() {
    let (service, mut handle) = retrying(RetryConfig {
        budget_ratio: 0.2,
        budget_min_per_sec: 1,
        budget_window: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        ..RetryConfig::default()
    });
    handle.allow(10_000);
    let clients = 200;
    let calls: Vec<_> = (0..clients)
        .map(|_| spawn_call(service.clone(), request()))
        .collect();
    let mut attempts = 0;
    let answering = async {
        while let Some((_, reply)) = handle.next_request().await {
            attempts += 1;
            reply.send_response(answer(503));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answering).await;
    for call in calls {
        assert_eq!(status_of(call).await, 503);
    }
    // 200 requests, retries at most 20 % of them plus the reserve of one
    // a second over the 10 s window.
    assert!(
        attempts <= clients + clients / 5 + 10,
        "{attempts} attempts for {clients} requests"
    );
    assert!(attempts > clients, "some retries were allowed");
}

#[tokio::test(start_paused = true)]
async fn after_overload_on_the_model_the_fallback_chain_is_tried_and_named() {
    let config = RetryConfig {
        max_attempts: 2,
        fallback_models: vec!["llama3:8b".into(), "tinyllama".into()],
        ..config()
    };
    let (call, mut handle) = send(config, request());
    let seen = answer_with(&mut handle, &[503, 503, 503, 503, 200]).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-corral-fallback"], "llama3->tinyllama");
    let models: Vec<String> = seen
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        models,
        ["llama3", "llama3", "llama3:8b", "llama3:8b", "tinyllama"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_rewritten_for_a_fallback_model_drops_the_clients_content_length() {
    let config = RetryConfig {
        max_attempts: 1,
        fallback_models: vec!["a-much-longer-fallback-model-name".into()],
        ..config()
    };
    let mut asked = request();
    asked
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, BODY.len().into());
    let (call, mut handle) = send(config, asked);
    let (first, reply) = handle.next_request().await.unwrap();
    assert!(first.headers().contains_key(http::header::CONTENT_LENGTH));
    reply.send_response(answer(503));
    let (second, reply) = handle.next_request().await.unwrap();
    // hyper would send the old length and cut the longer JSON short.
    assert!(!second.headers().contains_key(http::header::CONTENT_LENGTH));
    let body = second.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["model"], "a-much-longer-fallback-model-name");
    reply.send_response(answer(200));
    assert_eq!(status_of(call).await, 200);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_backoff_cap_moves_on_to_the_fallback_model() {
    let with_fallback = RetryConfig {
        fallback_models: vec!["tinyllama".into()],
        ..config()
    };
    let (call, mut handle) = send(with_fallback, request());
    let (_, reply) = handle.next_request().await.unwrap();
    let started = Instant::now();
    reply.send_response(busy("600"));
    let seen = answer_with(&mut handle, &[200]).await;
    // Not ten minutes: on to the fallback after at most one backoff.
    assert!(seen[0].0 - started <= Duration::from_secs(2));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].1).unwrap();
    assert_eq!(body["model"], "tinyllama");
    assert_eq!(status_of(call).await, 200);

    // With no fallback left, the answer goes back as it came.
    let (call, mut handle) = send(config(), request());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(busy("600"));
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "600");
    assert!(no_more_attempts(&mut handle).await);
}

#[test]
fn bad_configs_name_the_key() {
    /// A change that makes a valid config invalid.
    type Spoil = fn(&mut RetryConfig);
    let cases: [(&str, Spoil); 4] = [
        ("max_attempts", |c| c.max_attempts = 0),
        ("budget_window", |c| {
            c.budget_window = Duration::from_secs(90)
        }),
        ("idle_timeout", |c| c.idle_timeout = Some(Duration::ZERO)),
        ("max_backoff", |c| c.max_backoff = Duration::from_millis(1)),
    ];
    for (key, spoil) in cases {
        let mut config = RetryConfig::default();
        spoil(&mut config);
        assert_eq!(config.validate().unwrap_err().key(), key, "{key}");
    }
}
