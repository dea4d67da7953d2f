//! What the cache's tests share: a request with its meta, an upstream
//! that counts its calls, and an answer read whole.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use corral_cache::{CacheConfig, CacheLayer, CacheService};
use corral_core::{Body, BoxBody, BoxError, Endpoint, GenerationParams, RequestMeta};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};

pub(crate) const STREAMED: &str = "{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"Hello\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\" there\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";

/// A generate request from agent-a for llama3 with `body`, its temperature and stream flag in its meta.
pub(crate) fn request(body: &'static str, temperature: Option<f64>, stream: bool) -> Request<Body> {
    let mut meta = RequestMeta::new("r".into(), Endpoint::Generate)
        .with_agent("agent-a".into(), "opus".into(), false)
        .with_model(Some("llama3".into()));
    meta.stream = stream;
    meta.generation = GenerationParams {
        temperature,
        ..GenerationParams::default()
    };
    let mut request = Request::post("/api/generate")
        .body(Body::from(body))
        .unwrap();
    request.extensions_mut().insert(meta);
    request
}

pub(crate) const DETERMINISTIC: &str =
    r#"{"model":"llama3","prompt":"hi","options":{"temperature":0}}"#;

/// The deterministic request (temperature 0), streamed or whole.
pub(crate) fn deterministic(stream: bool) -> Request<Body> {
    request(DETERMINISTIC, Some(0.0), stream)
}

/// A cache layer built from `config` over `upstream`.
pub(crate) fn cache<S>(config: &CacheConfig, upstream: S) -> CacheService<S> {
    CacheLayer::new(config).unwrap().layer(upstream)
}

/// Sends `request` through a clone of `service` and returns its answer.
pub(crate) async fn send<S>(service: &S, request: Request<Body>) -> Response<BoxBody>
where
    S: Service<Request<Body>, Response = Response<BoxBody>> + Clone,
    S::Error: std::fmt::Debug,
{
    service.clone().oneshot(request).await.unwrap()
}

/// Sends `request` through a clone of `service`; its cache header and body.
pub(crate) async fn ask<S>(service: &S, request: Request<Body>) -> (String, String)
where
    S: Service<Request<Body>, Response = Response<BoxBody>> + Clone,
    S::Error: std::fmt::Debug,
{
    text(send(service, request).await).await
}

/// A test upstream, boxed: a request in, an answer with a `B` body out.
pub(crate) type Upstream<B> = BoxCloneService<Request<Body>, Response<B>, BoxError>;

/// An upstream that answers every call with the same NDJSON stream and
/// counts its calls.
pub(crate) fn counting() -> (Upstream<Full<Bytes>>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_request: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::new(Full::new(Bytes::from_static(STREAMED.as_bytes())));
            response
                .headers_mut()
                .insert("content-type", "application/x-ndjson".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    (BoxCloneService::new(service), calls)
}

/// An answer's `x-corral-cache` header (empty if absent) and its body read whole.
pub(crate) async fn text(response: Response<BoxBody>) -> (String, String) {
    let cache = response
        .headers()
        .get("x-corral-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (cache, String::from_utf8(body.to_vec()).unwrap())
}
