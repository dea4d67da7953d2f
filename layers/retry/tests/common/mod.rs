//! What the retry tests share: a mocked upstream, a request with its
//! metadata, and answering attempts.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use bytes::Bytes;
use corral_core::{Body, Endpoint, RequestMeta};
use corral_retry::{RetryConfig, RetryLayer};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_test::mock;

pub(crate) type Upstream = mock::Mock<Request<Body>, Response<Channel<Bytes, std::io::Error>>>;
pub(crate) type Handle = mock::Handle<Request<Body>, Response<Channel<Bytes, std::io::Error>>>;

pub(crate) const BODY: &str = r#"{"model":"llama3","prompt":"hi"}"#;

pub(crate) fn request() -> Request<Body> {
    let meta = RequestMeta::new("r".into(), Endpoint::Generate).with_model(Some("llama3".into()));
    let mut request = Request::post("/api/generate")
        .body(Body::from(BODY))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

pub(crate) fn answer(status: u16) -> Response<Channel<Bytes, std::io::Error>> {
    let mut response = Response::new(Channel::new(4).1);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// No further attempt reaches the upstream (the service may be gone,
/// which ends the stream of requests).
pub(crate) async fn no_more_attempts(handle: &mut Handle) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await,
        Err(_) | Ok(None)
    )
}

pub(crate) fn layer(config: RetryConfig) -> RetryLayer {
    RetryLayer::new(&config).unwrap()
}

pub(crate) fn config() -> RetryConfig {
    RetryConfig {
        budget_min_per_sec: 100,
        ..RetryConfig::default()
    }
}

/// Answers the next `statuses.len()` attempts; the instants they came.
pub(crate) async fn answer_with(handle: &mut Handle, statuses: &[u16]) -> Vec<(Instant, Bytes)> {
    let mut seen = Vec::new();
    for status in statuses {
        let (request, reply) = handle.next_request().await.unwrap();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        seen.push((Instant::now(), body));
        reply.send_response(answer(*status));
    }
    seen
}
