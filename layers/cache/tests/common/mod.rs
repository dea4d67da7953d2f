//! What the cache's tests share: a request with its meta, an upstream
//! that counts its calls, and an answer read whole.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking
#![allow(clippy::type_complexity)] // test upstreams spelled out as impl Service

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use corral_core::{Body, BoxError, Endpoint, GenerationParams, RequestMeta};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::service_fn;

pub(crate) const STREAMED: &str = "{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"Hello\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\" there\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";

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

/// An upstream that answers every call with the same NDJSON stream and
/// counts its calls.
pub(crate) fn counting() -> (
    impl tower::Service<
            Request<Body>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    Arc<AtomicUsize>,
) {
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
    (service, calls)
}

pub(crate) async fn text(response: Response<corral_core::BoxBody>) -> (String, String) {
    let cache = response
        .headers()
        .get("x-corral-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (cache, String::from_utf8(body.to_vec()).unwrap())
}
