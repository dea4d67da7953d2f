//! A plain tower client of Ollama (hyper-util) with Corral's layers in
//! front: `ratelimit` keeps this program within its quota (requests and
//! generated tokens per minute, corrected by what each answer reports),
//! and `cache` answers a deterministic question asked again without
//! asking Ollama (and joins identical questions in flight to one call).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), corral_core::BoxError> {
//! let client = corral_example_tower_client::Client::new("http://127.0.0.1:11434", 30)?;
//! let answer = client.generate("llama3", "Why is the sky blue?").await?;
//! println!("{} (cached: {})", answer.text, answer.cached);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use corral_cache::{CacheConfig, CacheLayer};
use corral_core::{Body, BoxBody, BoxError, ConfigError, Endpoint, RequestMeta};
use corral_ratelimit::{Limits, RateLimitConfig, RateLimitLayer};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// An Ollama client within a quota, with a cache.
#[derive(Clone)]
pub struct Client {
    url: Arc<str>,
    service: BoxCloneSyncService<http::Request<Body>, http::Response<BoxBody>, BoxError>,
}

/// A generation's text, and whether the cache answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the model wrote.
    pub text: String,
    /// Answered from the cache, without asking Ollama.
    pub cached: bool,
}

impl Client {
    /// A client of the Ollama at `url` that asks at most
    /// `requests_per_minute` times a minute.
    pub fn new(url: &str, requests_per_minute: u64) -> Result<Self, ConfigError> {
        let hyper: HyperClient<HttpConnector, Body> =
            HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let limits = Limits {
            requests_per_minute: Some(requests_per_minute),
            ..Limits::default()
        };
        let quota = RateLimitConfig {
            classes: BTreeMap::from([("default".to_string(), limits)]),
            ..RateLimitConfig::default()
        };
        let service = ServiceBuilder::new()
            .layer(RateLimitLayer::new(&quota)?)
            .layer(CacheLayer::new(&CacheConfig::default())?)
            .map_err(Into::<BoxError>::into)
            .service(hyper);
        Ok(Self {
            url: Arc::from(url.trim_end_matches('/')),
            service: BoxCloneSyncService::new(
                service.map_response(|r| r.map(|body| body.map_err(Into::into).boxed_unsync())),
            ),
        })
    }

    /// Asks `model` for a whole answer to `prompt`, deterministically
    /// (temperature 0: the cache may keep it). A refusal by the quota is
    /// an error that says when to come back (`corral_ratelimit::RateLimited`).
    pub async fn generate(&self, model: &str, prompt: &str) -> Result<Answer, BoxError> {
        let body = serde_json::json!({"model": model, "prompt": prompt, "stream": false,
            "options": {"temperature": 0}});
        let mut request = http::Request::post(format!("{}/api/generate", self.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))?;
        // What the layers read: the call, the model, that it is whole and
        // deterministic. (corral-classify reads this from the body; a
        // client that builds the body knows it already.)
        let mut meta = RequestMeta::new(corral_core::RequestId::generate(), Endpoint::Generate)
            .with_model(Some(model.into()));
        meta.stream = false;
        meta.generation.temperature = Some(0.0);
        request.extensions_mut().insert(meta);
        let response = self.service.clone().oneshot(request).await?;
        let cached = response
            .headers()
            .get(corral_cache::X_CORRAL_CACHE)
            .is_some_and(|v| v == "hit");
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!(
                "Ollama answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )
            .into());
        }
        let generated: serde_json::Value = serde_json::from_slice(&bytes)?;
        Ok(Answer {
            text: generated["response"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            cached,
        })
    }
}
