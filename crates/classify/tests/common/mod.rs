//! What the classify tests share: the layer over a service that records
//! what it saw, and a fleet of classes and agents.

#![allow(dead_code)] // each test file uses its own share

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

pub(crate) fn config(toml: &str) -> ClassifyConfig {
    toml::from_str(toml).expect("test config parses")
}

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

pub(crate) fn chat(_body: &'static str) -> http::request::Builder {
    Request::post("/api/chat")
}

pub(crate) const FLEET: &str = r#"
    [[classes]]
    name = "opus"
    priority = 3
    priorities = [2, 5]
    [[classes]]
    name = "batch"
    priority = 9
    priorities = [7, 10]
    [[agents]]
    id = "planner"
    key = "sk-planner-secret"
    class = "opus"
    [[agents]]
    id = "nightly"
    class = "batch"
"#;

pub(crate) const CHAT: &str = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;
