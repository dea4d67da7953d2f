//! What the rate limiter's tests share: requests with their metadata, the
//! layer over a mocked upstream, and sending through it.

#![allow(clippy::unwrap_used, dead_code)] // a test fails by panicking; each test file uses some

use std::convert::Infallible;

use bytes::Bytes;
use corral_core::{Body, Endpoint, GenerationParams, Priority, RequestMeta};
use corral_ratelimit::{
    Calendar, RateLimitConfig, RateLimitLayer, RateLimitService, RateLimited, ResponseBody,
};
use http::{Request, Response};
use http_body_util::channel::Channel;
use tower::{Layer, ServiceExt};
use tower_test::mock;

/// A request to `endpoint` from `agent` of `class`, asking for at most
/// `max_tokens`.
pub(crate) fn request(
    endpoint: Endpoint,
    agent: &str,
    class: &str,
    max_tokens: Option<u64>,
) -> Request<Body> {
    let mut meta = RequestMeta::new("r".into(), endpoint)
        .with_agent(agent.into(), class.into(), false)
        .with_priority(Priority::DEFAULT);
    meta.generation = GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    };
    let mut request = Request::post("/api/chat").body(Body::from("{}")).unwrap();
    request.extensions_mut().insert(meta);
    request
}

/// A chat request from `agent` of `class`, asking for at most `max_tokens`.
pub(crate) fn chat(agent: &str, class: &str, max_tokens: Option<u64>) -> Request<Body> {
    request(Endpoint::Chat, agent, class, max_tokens)
}

pub(crate) type UpstreamBody = Channel<Bytes, Infallible>;
pub(crate) type Upstream = mock::Mock<Request<Body>, Response<UpstreamBody>>;
pub(crate) type Handle = mock::Handle<Request<Body>, Response<UpstreamBody>>;
pub(crate) type Limited = RateLimitService<Upstream>;

/// The layer from the TOML config `toml` over a mocked upstream that takes
/// ten requests, and the upstream's handle.
pub(crate) fn limited(toml: &str) -> (Limited, Handle) {
    limited_on(toml, Calendar::System)
}

/// The same, its budgets' days and months read from `calendar`.
pub(crate) fn limited_on(toml: &str, calendar: Calendar) -> (Limited, Handle) {
    let config = toml::from_str::<RateLimitConfig>(toml).unwrap();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    handle.allow(10);
    (
        RateLimitLayer::new(&config)
            .unwrap()
            .with_calendar(calendar)
            .layer(upstream),
        handle,
    )
}

/// Sends `request` through `service` and answers it upstream with `body`:
/// the answer the client got.
pub(crate) async fn answered(
    service: &Limited,
    handle: &mut Handle,
    request: Request<Body>,
    body: UpstreamBody,
) -> Response<ResponseBody<UpstreamBody>> {
    let call = tokio::spawn(service.clone().oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new(body));
    call.await.unwrap().unwrap()
}

/// Sends `request` through `service` and answers it upstream with an empty
/// body: the answer the client got.
pub(crate) async fn passed(
    service: &Limited,
    handle: &mut Handle,
    request: Request<Body>,
) -> Response<ResponseBody<UpstreamBody>> {
    answered(service, handle, request, Channel::new(1).1).await
}

/// Sends `request` through `service`, which must refuse it: why.
pub(crate) async fn refused(service: &Limited, request: Request<Body>) -> RateLimited {
    let err = service.clone().oneshot(request).await.unwrap_err();
    match err.downcast::<RateLimited>() {
        Ok(limited) => *limited,
        Err(other) => panic!("not a rate limit: {other}"),
    }
}
