//! `corral-retry`: retries that never storm, and timeouts that fit
//! streaming.
//!
//! - **Only what is safe**: what was refused before any work —
//!   connection errors (refused, or broken before any answer) and 502/503
//!   (Ollama's "server busy" is a 503) — decided at the headers, so never
//!   once a stream has started and never a 4xx or a 500. A generation
//!   that timed out (or a gateway's 504) may have run to its end on the
//!   GPU: it is not sent again unless `rerun_timed_out` (metadata reads
//!   are). Only inference and metadata reads with a buffered body are
//!   retried; the body is replayed from the bytes `classify` read, never
//!   re-read from the client.
//! - **Backoff** with full jitter: retry `n` waits a random time up to
//!   `initial_backoff × backoff_multiplier^(n-1)`, at most `max_backoff`
//!   (the design's 3 attempts, base 2, cap 30 s). An upstream
//!   `Retry-After` is waited out instead. No retry starts that could not
//!   finish before the request's deadline (`X-Deadline-Ms`) or the total
//!   timeout.
//! - **Budget** shared by every request through the layer, in the manner
//!   of linkerd and Finagle (tower's `TpsBudget`): retries stay within
//!   `budget_ratio` of recent requests plus `budget_min_per_sec`, so a
//!   failing upstream sees a bounded multiple of the client traffic.
//! - **Timeouts**: `first_byte_timeout` per attempt of a stream (a
//!   non-streamed generation sends nothing until its last token, so it
//!   gets none: `total_timeout` and the deadline bound it), `idle_timeout`
//!   between stream chunks, an optional `total_timeout`. A timed-out
//!   attempt is marked with [`AttemptTimedOut`](corral_core::AttemptTimedOut)
//!   so a breaker below counts it. A stream cut by a timeout ends with a
//!   [`Timeout`](corral_core::Timeout) error, which the layers above
//!   count as a failure and the proxy renders in the client's framing:
//!   never a silent truncation.
//! - **Fallback**: once the attempts on the requested model failed with
//!   overload, `fallback_models` are tried in order (the design's large
//!   model down to `tinyllama`); the answer says so in
//!   `X-Corral-Fallback: llama3->tinyllama`.
//!
//! # Example
//!
//! The layer retries only what it knows to be safe to send again: a
//! request with a [`RequestMeta`](corral_core::RequestMeta) (which
//! `corral-classify` puts in the extensions, or a service may insert
//! itself) for an inference or metadata endpoint, with a buffered
//! [`Body`](corral_core::Body). Without one, every failure is passed on
//! at once. Requests are `http::Request<corral_core::Body>`.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use corral_core::{Body, Endpoint, RequestMeta};
//! use corral_retry::{RetryConfig, RetryLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! // An upstream busy twice, then answering.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new(&RetryConfig::default()).unwrap())
//!     .service(service_fn(move |_request: http::Request<Body>| {
//!         let status = if seen.fetch_add(1, Ordering::SeqCst) < 2 { 503 } else { 200 };
//!         async move {
//!             let mut response = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
//!             *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
//!             Ok::<_, std::convert::Infallible>(response)
//!         }
//!     }));
//!
//! let mut request = http::Request::post("/api/generate")
//!     .body(Body::from(r#"{"model":"llama3","prompt":"hi"}"#))
//!     .unwrap();
//! request
//!     .extensions_mut()
//!     .insert(RequestMeta::new("r-1".into(), Endpoint::Generate));
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # });
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: a retry sends the buffered
//! bytes again (`Body::try_clone`), which a streamed body cannot give.

mod body;
mod config;
mod decide;
mod layer;
pub mod metrics;
mod service;

pub use body::ResponseBody;
pub use config::{
    RetryConfig, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BACKOFF, DEFAULT_METADATA_TIMEOUT,
};
pub use layer::RetryLayer;
pub use service::{ResponseFuture, RetryService, X_CORRAL_FALLBACK};

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[];
