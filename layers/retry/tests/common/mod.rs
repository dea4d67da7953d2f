//! What the retry tests share: a mocked upstream, a request with its
//! metadata, and answering attempts.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use bytes::Bytes;
use corral_core::{Body, BoxError, Endpoint, RequestMeta};
use corral_retry::{ResponseBody, RetryConfig, RetryLayer, RetryService};
use http::{Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

/// The body of the mocked upstream's answers.
pub(crate) type UpstreamBody = Channel<Bytes, std::io::Error>;
/// The mocked upstream.
pub(crate) type Upstream = mock::Mock<Request<Body>, Response<UpstreamBody>>;
/// The test's side of the mocked upstream: the attempts, to answer.
pub(crate) type Handle = mock::Handle<Request<Body>, Response<UpstreamBody>>;
/// A call through the retry layer, running on a task of its own.
pub(crate) type Call = JoinHandle<Result<Response<ResponseBody<UpstreamBody>>, BoxError>>;

/// The generation request's body.
pub(crate) const BODY: &str = r#"{"model":"llama3","prompt":"hi"}"#;

/// A streamed generate request for llama3 with [`BODY`].
pub(crate) fn request() -> Request<Body> {
    request_where(|_| {})
}

/// The generate request of [`request`], its metadata changed by `edit`.
pub(crate) fn request_where(edit: impl FnOnce(&mut RequestMeta)) -> Request<Body> {
    let mut meta =
        RequestMeta::new("r".into(), Endpoint::Generate).with_model(Some("llama3".into()));
    edit(&mut meta);
    let mut request = Request::post("/api/generate")
        .body(Body::from(BODY))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

/// An upstream answer with `status` and a body never written.
pub(crate) fn answer(status: u16) -> Response<UpstreamBody> {
    let mut response = Response::new(Channel::new(4).1);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// A 503 that asks to be retried after `seconds`.
pub(crate) fn busy(seconds: &str) -> Response<UpstreamBody> {
    let mut busy = answer(503);
    busy.headers_mut()
        .insert("retry-after", seconds.parse().unwrap());
    busy
}

/// The retry layer from `config` over a mocked upstream that takes ten
/// attempts, and the upstream's handle.
pub(crate) fn retrying(config: RetryConfig) -> (RetryService<Upstream>, Handle) {
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    handle.allow(10);
    (layer(config).layer(upstream), handle)
}

/// Sends `request` through `service` on a task of its own.
pub(crate) fn spawn_call(service: RetryService<Upstream>, request: Request<Body>) -> Call {
    tokio::spawn(service.oneshot(request))
}

/// Sends `request` through [`retrying`]`(config)`: the call and the
/// upstream's handle.
pub(crate) fn send(config: RetryConfig, request: Request<Body>) -> (Call, Handle) {
    let (service, handle) = retrying(config);
    (spawn_call(service, request), handle)
}

/// The status the call came back with.
pub(crate) async fn status_of(call: Call) -> StatusCode {
    call.await.unwrap().unwrap().status()
}

/// Leaves the first attempt unanswered: the call's error and how long it
/// took to come.
pub(crate) async fn hang(call: Call, handle: &mut Handle) -> (BoxError, Duration) {
    let start = Instant::now();
    let _hung = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    (err, start.elapsed())
}

/// No further attempt reaches the upstream (the service may be gone,
/// which ends the stream of requests).
pub(crate) async fn no_more_attempts(handle: &mut Handle) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await,
        Err(_) | Ok(None)
    )
}

/// The retry layer from `config`.
pub(crate) fn layer(config: RetryConfig) -> RetryLayer {
    RetryLayer::new(&config).unwrap()
}

/// The default config with a budget that never binds in these tests.
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
