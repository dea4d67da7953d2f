//! What the auth tests share: planner's secret and the tests' clock, the
//! layer over a service that echoes what it got, and signed requests.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use corral_auth::{
    AuthConfig, AuthLayer, MemoryReplay, SignatureProblem, SignatureRefused, Signed,
};
use corral_core::{Body, BoxError, ConfigError, Endpoint, RequestMeta};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Planner's signing secret.
pub(crate) const SECRET: &str = "planner secret, long enough";
/// The tests' clock: a fixed moment.
pub(crate) const NOW: f64 = 1_764_115_200.0;
/// The generation request's body.
pub(crate) const BODY: &[u8] = br#"{"model":"llama3","prompt":"hi"}"#;

/// An auth config of the TOML lines `extra` and planner's secret.
pub(crate) fn config(extra: &str) -> AuthConfig {
    toml::from_str(&format!(
        "{extra}\n[secrets]\nplanner = {{ value = \"{SECRET}\" }}\n"
    ))
    .unwrap()
}

/// The layer from `config` with an in-memory replay store and the tests'
/// clock, or why it cannot start.
pub(crate) fn layer(config: &AuthConfig) -> Result<AuthLayer, ConfigError> {
    AuthLayer::new(config).map(|l| {
        l.with_store(Arc::new(MemoryReplay::new(100)))
            .with_clock(|| NOW)
    })
}

/// `layer` over a service that echoes the body it got.
pub(crate) fn echo(
    layer: AuthLayer,
) -> impl Service<Request<Body>, Response = Response<Bytes>, Error = BoxError> + Clone {
    layer.layer(service_fn(|request: Request<Body>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(body))
    }))
}

/// The layer from `config` over a service that echoes the body it got.
pub(crate) fn service(
    config: &AuthConfig,
) -> impl Service<Request<Body>, Response = Response<Bytes>, Error = BoxError> + Clone {
    echo(layer(config).unwrap())
}

/// A POST of `body` to `path`, classified as `endpoint` for llama3 from
/// `agent` of `class`.
pub(crate) fn request(
    agent: &str,
    class: &str,
    endpoint: Endpoint,
    path: &str,
    body: Body,
) -> Request<Body> {
    let mut request = Request::post(path).body(body).unwrap();
    let mut meta =
        RequestMeta::new("id".into(), endpoint).with_agent(agent.into(), class.into(), true);
    meta.model = Some("llama3".into());
    request.extensions_mut().insert(meta);
    request
}

/// An unsigned generation of [`BODY`] from `agent` of `class`.
pub(crate) fn generate(agent: &str, class: &str) -> Request<Body> {
    request(
        agent,
        class,
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    )
}

/// Signs `request` as `agent` at `timestamp` with request id `id`, over
/// `body`, with planner's secret.
pub(crate) fn sign(
    request: &mut Request<Body>,
    agent: &str,
    timestamp: f64,
    id: &str,
    body: &[u8],
) {
    let timestamp = format!("{timestamp}");
    let signature = Signed {
        agent,
        method: request.method().as_str(),
        path_and_query: request.uri().path_and_query().unwrap().as_str(),
        timestamp: &timestamp,
        request_id: id,
        body,
    }
    .sign(SECRET.as_bytes());
    let headers = request.headers_mut();
    headers.insert("x-timestamp", timestamp.parse().unwrap());
    headers.insert("x-request-id", id.parse().unwrap());
    headers.insert("x-signature", signature.parse().unwrap());
}

/// Planner's generation, signed at `timestamp` with request id `id`.
pub(crate) fn signed(id: &str, timestamp: f64) -> Request<Body> {
    let mut r = generate("planner", "opus");
    sign(&mut r, "planner", timestamp, id, BODY);
    r
}

/// What is wrong with the signature, by the layer's refusal.
pub(crate) fn problem(error: &BoxError) -> SignatureProblem {
    error
        .downcast_ref::<SignatureRefused>()
        .unwrap_or_else(|| panic!("not a signature refusal: {error}"))
        .problem()
}

/// Sends `request` through a clone of `service`, which must refuse it: why.
pub(crate) async fn refused<S>(service: &S, request: Request<Body>) -> BoxError
where
    S: Service<Request<Body>, Error = BoxError> + Clone,
{
    match service.clone().oneshot(request).await {
        Ok(_) => panic!("the layer let the request through"),
        Err(err) => err,
    }
}

/// Sends `request` through a clone of `service`: whether it passed.
pub(crate) async fn passes<S>(service: &S, request: Request<Body>) -> bool
where
    S: Service<Request<Body>, Error = BoxError> + Clone,
{
    service.clone().oneshot(request).await.is_ok()
}
