//! What the classify tests share: the layer over a service that records
//! what it saw, and a fleet of classes and agents.

#![allow(dead_code)] // each test file uses its own share
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;

use bytes::Bytes;
use corral_classify::{ClassifyConfig, ClassifyLayer};
use corral_core::{Body, BoxError, RequestMeta};
use http::Request;
use tower::{service_fn, Layer, ServiceExt};

/// What the inner service saw: the metadata and whether the body arrived
/// buffered.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) meta: RequestMeta,
    pub(crate) buffered: Option<Bytes>,
    pub(crate) request_id_header: Option<String>,
}

/// A classify config parsed from `toml`.
pub(crate) fn config(toml: &str) -> ClassifyConfig {
    toml::from_str(toml).expect("test config parses")
}

/// Runs `request` through the layer built from `config`: what the inner
/// service saw, or the layer's refusal.
pub(crate) async fn classify(
    config: &ClassifyConfig,
    request: Request<Body>,
) -> Result<Seen, BoxError> {
    let layer = ClassifyLayer::new(config).expect("test config is valid");
    let service = layer.layer(service_fn(|request: Request<Body>| async move {
        Ok::<_, Infallible>(Seen {
            meta: request
                .extensions()
                .get::<RequestMeta>()
                .cloned()
                .expect("meta is set"),
            buffered: request.body().buffered().cloned(),
            request_id_header: request
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_string()),
        })
    }));
    service.oneshot(request).await
}

/// What the inner service saw of a request the layer must let through.
pub(crate) async fn admitted(config: &ClassifyConfig, request: Request<Body>) -> Seen {
    classify(config, request)
        .await
        .expect("the layer lets the request through")
}

/// Why the layer refused a request it must refuse.
pub(crate) async fn refused(config: &ClassifyConfig, request: Request<Body>) -> BoxError {
    classify(config, request)
        .await
        .expect_err("the layer refuses the request")
}

/// A POST of `body` to `path`.
pub(crate) fn post(path: &str, body: Body) -> Request<Body> {
    Request::post(path).body(body).unwrap()
}

/// The chat request [`CHAT`] with these headers.
pub(crate) fn chat(headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post("/api/chat");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(CHAT)).unwrap()
}

/// Two classes, opus and batch, and two agents: planner (keyed, opus) and
/// nightly (keyless, batch).
pub(crate) const FLEET: &str = r#"
    classes = [
        { name = "opus", priority = 3, priorities = [2, 5] },
        { name = "batch", priority = 9, priorities = [7, 10] },
    ]
    agents = [
        { id = "planner", key = "sk-planner-secret", class = "opus" },
        { id = "nightly", class = "batch" },
    ]
"#;

/// A chat body for llama3.
pub(crate) const CHAT: &str = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;
