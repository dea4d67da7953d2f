//! The admin paths: `/corral/healthz`, `/corral/readyz`, `/metrics`.
//!
//! They live under `/corral/`, which no Ollama path uses, and answer on
//! the main listener unless `[admin] listen` gives them their own.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use std::sync::Arc;

use corral_core::{full, ApiFamily, BoxBody, ErrorBody, Level, LoadCell};
use http_body_util::BodyExt;

use crate::registry::Controls;
use crate::respond;
use crate::telemetry;
use crate::upstream::Upstream;

/// The admin endpoints.
#[derive(Clone)]
pub struct Admin {
    upstream: Upstream,
    metrics: PrometheusHandle,
    load: LoadCell,
    controls: Arc<Controls>,
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
    pub fn new(
        upstream: Upstream,
        metrics: PrometheusHandle,
        load: LoadCell,
        controls: Arc<Controls>,
    ) -> Self {
        Self {
            upstream,
            metrics,
            load,
            controls,
        }
    }

    /// Whether `path` is an admin path.
    pub fn owns(path: &str) -> bool {
        path.starts_with("/corral/") || path == "/metrics"
    }

    /// Answers an admin request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        let get = request.method() == Method::GET || request.method() == Method::HEAD;
        match request.uri().path() {
            "/corral/degrade" => self.degrade(request).await,
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
                if let Some(cache) = self.controls.cache.get() {
                    let (entries, bytes) = cache.size();
                    metrics::gauge!(corral_cache::metrics::CACHE_ENTRIES).set(entries as f64);
                    metrics::gauge!(corral_cache::metrics::CACHE_BYTES).set(bytes as f64);
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

impl Admin {
    /// `GET` the degradation level; `POST {"level": "L2"}` forces one,
    /// `POST {"level": null}` or `DELETE` releases it.
    async fn degrade<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        let Some(controller) = self.controls.degrade.get() else {
            return error(
                StatusCode::NOT_FOUND,
                "the stack has no degrade layer".into(),
            );
        };
        let method = request.method().clone();
        if method == Method::POST {
            let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}"),
                    )
                }
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Force {
                level: Option<String>,
            }
            let force: Force = match serde_json::from_slice(&body) {
                Ok(force) => force,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("expected {{\"level\": \"Normal|L1|L2|Critical\" or null}}: {e}"),
                    )
                }
            };
            let level = match force.level.as_deref().map(str::parse::<Level>).transpose() {
                Ok(level) => level,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            controller.force(level);
        } else if method == Method::DELETE {
            controller.force(None);
        } else if method != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST or DELETE".into(),
            );
        }
        let status = controller.status();
        json_response(
            StatusCode::OK,
            &json!({
                "level": status.level.as_str(),
                "load": status.load,
                "forced": status.forced.map(|l| l.as_str()),
            }),
        )
    }
}

fn error(status: StatusCode, message: String) -> Response<BoxBody> {
    respond::answer(&ErrorBody::new(status, message), ApiFamily::Ollama)
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
