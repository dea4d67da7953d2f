//! The admin paths: `/corral/healthz`, `/corral/readyz`, `/metrics`.
//!
//! They live under `/corral/`, which no Ollama path uses, and answer on
//! the main listener unless `[admin] listen` gives them their own.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use corral_core::{full, ApiFamily, BoxBody, ErrorBody, LoadCell};

use crate::respond;
use crate::telemetry;
use crate::upstream::Upstream;

/// The admin endpoints.
#[derive(Clone)]
pub struct Admin {
    upstream: Upstream,
    metrics: PrometheusHandle,
    load: LoadCell,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Admin {
    /// Admin endpoints reporting on `upstream` and the scheduler's `load`,
    /// exporting `metrics`.
    pub fn new(upstream: Upstream, metrics: PrometheusHandle, load: LoadCell) -> Self {
        Self {
            upstream,
            metrics,
            load,
        }
    }

    /// Whether `path` is an admin path.
    pub fn owns(path: &str) -> bool {
        path.starts_with("/corral/") || path == "/metrics"
    }

    /// Answers an admin request.
    pub async fn handle<B>(&self, request: &Request<B>) -> Response<BoxBody> {
        let get = request.method() == Method::GET || request.method() == Method::HEAD;
        match request.uri().path() {
            "/corral/healthz" if get => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/corral/readyz" if get => match self.upstream.probe().await {
                Ok(version) => json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "upstream": self.upstream.url().to_string(), "version": version}),
                ),
                Err(error) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready", "upstream": self.upstream.url().to_string(), "error": error}),
                ),
            },
            "/metrics" | "/corral/metrics" if get => {
                if let Some(load) = self.load.get() {
                    telemetry::record_load(&load.snapshot());
                }
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            path => respond::answer(
                &ErrorBody::new(
                    StatusCode::NOT_FOUND,
                    format!("no admin endpoint {} {path}", request.method()),
                ),
                ApiFamily::Ollama,
            ),
        }
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<BoxBody> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
