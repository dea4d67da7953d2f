//! An axum service that asks Ollama through its own client, with
//! Corral's layers in front of that client: the `priority` scheduler (one
//! generation at a time, the urgent first, fair between callers), `retry`
//! (what Ollama refused before any work) and a `breaker` (fail fast while
//! Ollama fails), and core's responder, which turns their refusals into
//! answers with `Retry-After` and `X-Corral-Reason`.
//!
//! `POST /ask` with `{"prompt": "..."}` (optional `model`) and the
//! caller's `X-Agent-Id` and `X-Priority` answers `{"answer": "..."}`.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ollama = corral_example_axum::OllamaClient::new("http://127.0.0.1:11434", 1)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, corral_example_axum::app(ollama)).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use corral_breaker::{BreakerConfig, BreakerLayer};
use corral_core::respond::RespondLayer;
use corral_core::{Body, BoxBody, ConfigError, Endpoint, RequestMeta};
use corral_priority::{PriorityConfig, PriorityLayer};
use corral_retry::{RetryConfig, RetryLayer};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The service's Ollama client: a hyper-util client behind the layers.
#[derive(Clone)]
pub struct OllamaClient {
    url: Arc<str>,
    service: BoxCloneSyncService<http::Request<Body>, http::Response<BoxBody>, Infallible>,
}

impl OllamaClient {
    /// A client of the Ollama at `url` that runs `capacity` generations at
    /// once (what the server's `OLLAMA_NUM_PARALLEL` says).
    pub fn new(url: &str, capacity: usize) -> Result<Self, ConfigError> {
        let client: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let service = ServiceBuilder::new()
            .layer(
                RespondLayer::new()
                    .with_refusals(corral_priority::REFUSALS)
                    .with_refusals(corral_breaker::REFUSALS),
            )
            .layer(PriorityLayer::new(&PriorityConfig {
                capacity,
                ..PriorityConfig::default()
            })?)
            .layer(RetryLayer::new(&RetryConfig {
                initial_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(1),
                ..RetryConfig::default()
            })?)
            .layer(BreakerLayer::new(&BreakerConfig {
                consecutive_failures: Some(2),
                ..BreakerConfig::default()
            })?)
            .service(client);
        Ok(Self {
            url: Arc::from(url.trim_end_matches('/')),
            service: BoxCloneSyncService::new(service),
        })
    }

    /// Asks for a whole generation as `meta` says (who, at what
    /// priority): Ollama's answer, or the layers' refusal as an answer.
    pub async fn generate(
        &self,
        model: &str,
        prompt: &str,
        meta: RequestMeta,
    ) -> http::Response<BoxBody> {
        let body = serde_json::json!({"model": model, "prompt": prompt, "stream": false});
        let mut request = http::Request::post(format!("{}/api/generate", self.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_default();
        let mut meta = meta.with_model(Some(model.into()));
        meta.endpoint = Endpoint::Generate;
        meta.stream = false;
        request.extensions_mut().insert(meta);
        match self.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

#[derive(serde::Deserialize)]
struct Ask {
    prompt: String,
    #[serde(default = "default_model")]
    model: String,
}

fn default_model() -> String {
    "llama3".into()
}

/// The service: `POST /ask`.
pub fn app(ollama: OllamaClient) -> Router {
    Router::new().route("/ask", post(ask)).with_state(ollama)
}

async fn ask(
    State(ollama): State<OllamaClient>,
    headers: HeaderMap,
    Json(ask): Json<Ask>,
) -> Response {
    // Who asks and how urgently, from the caller's headers.
    let mut head = http::Request::new(());
    *head.headers_mut() = headers;
    let (parts, ()) = head.into_parts();
    let meta = RequestMeta::from_parts(&parts);
    let answer = ollama.generate(&ask.model, &ask.prompt, meta).await;
    if !answer.status().is_success() {
        // A refusal (queue, breaker) or Ollama's error: passed on as it
        // is, Retry-After and X-Corral-Reason included.
        return answer.into_response();
    }
    let bytes = match answer.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let generated: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Json(serde_json::json!({"answer": generated["response"]})).into_response()
}
