//! The retry layer alone, with time paused: what is retried and what is
//! not, the backoff schedule, Retry-After, deadlines, the budget under a
//! storm, timeouts (first byte, idle), and the fallback chain.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use bytes::Bytes;
use corral_core::{AttemptTimedOut, Body, Endpoint, RequestMeta, Timeout, UpstreamFailed};
use corral_retry::{RetryConfig, RetryLayer};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Upstream = mock::Mock<Request<Body>, Response<Channel<Bytes, std::io::Error>>>;
type Handle = mock::Handle<Request<Body>, Response<Channel<Bytes, std::io::Error>>>;

const BODY: &str = r#"{"model":"llama3","prompt":"hi"}"#;

fn request() -> Request<Body> {
    let meta = RequestMeta::new("r".into(), Endpoint::Generate).with_model(Some("llama3".into()));
    let mut request = Request::post("/api/generate")
        .body(Body::from(BODY))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

fn answer(status: u16) -> Response<Channel<Bytes, std::io::Error>> {
    let mut response = Response::new(Channel::new(4).1);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// No further attempt reaches the upstream (the service may be gone,
/// which ends the stream of requests).
async fn no_more_attempts(handle: &mut Handle) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await,
        Err(_) | Ok(None)
    )
}

fn layer(config: RetryConfig) -> RetryLayer {
    RetryLayer::new(&config).unwrap()
}

fn config() -> RetryConfig {
    RetryConfig {
        budget_min_per_sec: 100,
        ..RetryConfig::default()
    }
}

/// Answers the next `statuses.len()` attempts; the instants they came.
async fn answer_with(handle: &mut Handle, statuses: &[u16]) -> Vec<(Instant, Bytes)> {
    let mut seen = Vec::new();
    for status in statuses {
        let (request, reply) = handle.next_request().await.unwrap();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        seen.push((Instant::now(), body));
        reply.send_response(answer(*status));
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_503s_is_absorbed_and_the_body_is_replayed_each_time() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let seen = answer_with(&mut handle, &[503, 503, 200]).await;
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    assert!(
        seen.iter().all(|(_, body)| body == BODY),
        "the same bytes every time"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_wait_a_jittered_backoff_under_a_growing_ceiling() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 4,
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let seen = answer_with(&mut handle, &[503, 503, 503, 503]).await;
    assert_eq!(
        call.await.unwrap().unwrap().status(),
        503,
        "the last answer goes back"
    );
    let waits: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
    for (n, (wait, ceiling)) in waits.iter().zip([2, 4, 8]).enumerate() {
        assert!(
            *wait <= Duration::from_secs(ceiling),
            "retry {} waited {wait:?}",
            n + 1
        );
    }
}

/// Full jitter, exactly: each wait is its ceiling (2 s doubling, capped
/// at 30 s) times the next draw of the thread's generator, which the test
/// seeds (the runtime is single-threaded: the layer draws from it).
#[tokio::test(start_paused = true)]
async fn the_backoff_is_full_jitter_under_a_ceiling_that_doubles_up_to_its_cap() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 7,
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    fastrand::seed(131);
    let call = tokio::spawn(service.oneshot(request()));
    let seen = answer_with(&mut handle, &[503; 7]).await;
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
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
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    let first = Instant::now();
    let mut busy = answer(503);
    busy.headers_mut()
        .insert("retry-after", "7".parse().unwrap());
    reply.send_response(busy);
    let seen = answer_with(&mut handle, &[200]).await;
    assert_eq!(seen[0].0 - first, Duration::from_secs(7));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn client_errors_and_500s_are_never_retried() {
    for status in [400, 404, 429, 500] {
        let (upstream, mut handle): (Upstream, _) = mock::pair();
        let service = layer(config()).layer(upstream);
        handle.allow(10);
        let call = tokio::spawn(service.oneshot(request()));
        answer_with(&mut handle, &[status]).await;
        assert_eq!(call.await.unwrap().unwrap().status(), status);
        tokio::task::yield_now().await;
        assert!(no_more_attempts(&mut handle).await, "{status} was retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_error_is_retried() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error(UpstreamFailed::new("http://x", true, "connection refused"));
    answer_with(&mut handle, &[200]).await;
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // A connection that breaks before any answer (the upstream died while
    // loading a model) is sent again too.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error(UpstreamFailed::new(
        "http://x",
        false,
        "connection reset by peer",
    ));
    answer_with(&mut handle, &[200]).await;
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_started_is_never_retried_and_a_stall_ends_it_with_an_error_line() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        idle_timeout: Some(Duration::from_secs(5)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    let (mut tx, body) = Channel::new(4);
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "application/x-ndjson".parse().unwrap());
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    tx.send_data(Bytes::from_static(b"{\"response\":\"a\",\"done\":false}\n"))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    // The upstream stalls: after 5 s the stream ends with an error line.
    let started = Instant::now();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let line: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("stalled for 5000 ms"),
        "{line}"
    );
    assert!(body.frame().await.is_none(), "and then ends");
    drop(tx);
    assert!(no_more_attempts(&mut handle).await, "not retried");
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_the_wait_for_headers_too() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        total_timeout: Some(Duration::from_secs(10)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    // Not the first byte's 30 s: the whole request's 10 s, and no retry
    // after it (none could finish).
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let timeout = err.downcast_ref::<Timeout>().unwrap();
    assert_eq!(timeout.kind(), corral_core::TimeoutKind::Total);
    assert!(first
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .is_set());
    assert!(no_more_attempts(&mut handle).await);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_without_a_first_byte_in_time_is_marked_and_retried() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (first, _hung) = handle.next_request().await.unwrap();
    let mark = first.extensions().get::<AttemptTimedOut>().unwrap().clone();
    assert!(!mark.is_set());
    let (second, reply) = handle.next_request().await.unwrap();
    assert!(
        mark.is_set(),
        "the abandoned attempt is marked as timed out"
    );
    assert!(!second
        .extensions()
        .get::<AttemptTimedOut>()
        .unwrap()
        .is_set());
    reply.send_response(answer(200));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // Every attempt hangs: the client gets a 504 timeout.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 2,
        first_byte_timeout: Some(Duration::from_secs(30)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let _a = handle.next_request().await.unwrap();
    let _b = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is::<Timeout>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_cannot_finish_before_the_deadline() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        initial_backoff: Duration::from_secs(10),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let mut late = request();
    late.extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .deadline = Some(Instant::now() + Duration::from_millis(1));
    let call = tokio::spawn(service.oneshot(late));
    let (_, reply) = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    reply.send_response(answer(503));
    assert_eq!(call.await.unwrap().unwrap().status(), 503);
    assert!(no_more_attempts(&mut handle).await);
}

#[tokio::test(start_paused = true)]
async fn under_a_storm_the_budget_bounds_what_the_upstream_sees() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        budget_ratio: 0.2,
        budget_min_per_sec: 1,
        budget_window: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        ..RetryConfig::default()
    })
    .layer(upstream);
    handle.allow(10_000);
    let clients = 200;
    let calls: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(service.clone().oneshot(request())))
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
        assert_eq!(call.await.unwrap().unwrap().status(), 503);
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
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        max_attempts: 2,
        fallback_models: vec!["llama3:8b".into(), "tinyllama".into()],
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
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
async fn a_retry_after_longer_than_the_backoff_cap_moves_on_to_the_fallback_model() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        fallback_models: vec!["tinyllama".into()],
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    let started = Instant::now();
    let mut busy = answer(503);
    busy.headers_mut()
        .insert("retry-after", "600".parse().unwrap());
    reply.send_response(busy);
    let seen = answer_with(&mut handle, &[200]).await;
    // Not ten minutes: on to the fallback after at most one backoff.
    assert!(seen[0].0 - started <= Duration::from_secs(2));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].1).unwrap();
    assert_eq!(body["model"], "tinyllama");
    assert_eq!(call.await.unwrap().unwrap().status(), 200);

    // With no fallback left, the answer goes back as it came.
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(config()).layer(upstream);
    handle.allow(10);
    let call = tokio::spawn(service.oneshot(request()));
    let (_, reply) = handle.next_request().await.unwrap();
    let mut busy = answer(503);
    busy.headers_mut()
        .insert("retry-after", "600".parse().unwrap());
    reply.send_response(busy);
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "600");
    assert!(no_more_attempts(&mut handle).await);
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            "max_attempts",
        ),
        (
            RetryConfig {
                budget_window: Duration::from_secs(90),
                ..RetryConfig::default()
            },
            "budget_window",
        ),
        (
            RetryConfig {
                idle_timeout: Some(Duration::ZERO),
                ..RetryConfig::default()
            },
            "idle_timeout",
        ),
        (
            RetryConfig {
                max_backoff: Duration::from_millis(1),
                ..RetryConfig::default()
            },
            "max_backoff",
        ),
    ];
    for (config, key) in cases {
        assert_eq!(config.validate().unwrap_err().key(), key);
    }
}

#[tokio::test(start_paused = true)]
async fn an_openai_stream_that_stalls_ends_with_an_error_event() {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer(RetryConfig {
        idle_timeout: Some(Duration::from_secs(5)),
        ..config()
    })
    .layer(upstream);
    handle.allow(10);
    let meta = RequestMeta::new("r".into(), Endpoint::OpenAiChat).with_model(Some("llama3".into()));
    let mut request = Request::post("/v1/chat/completions")
        .body(Body::from(
            r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ))
        .unwrap();
    request.extensions_mut().insert(meta);
    let call = tokio::spawn(service.oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    let (mut tx, body) = Channel::new(4);
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    tx.send_data(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    let started = Instant::now();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let text = std::str::from_utf8(&last).unwrap();
    let event = text
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("an SSE event: {text:?}"))
        .trim_end();
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled for 5000 ms"),
        "{event}"
    );
    assert!(body.frame().await.is_none(), "and then ends");
    drop(tx);
}
