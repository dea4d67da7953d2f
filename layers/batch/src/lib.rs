//! `corral-batch`: embedding micro-batching.
//!
//! Concurrent `/api/embed` requests for the same model (and the same
//! other fields: options, truncation, dimensions) that arrive within a
//! short `window` are merged into one upstream call with an array
//! `input`, at most `max_inputs` inputs; each caller gets its own slice of
//! the vectors back in Ollama's shape. An embedding model computes a batch
//! in about the time of one input, so a herd of agents embedding one
//! string each costs the GPU a fraction of the calls.
//!
//! A batch of one is sent unchanged. If the merged call fails, every
//! caller gets its answer (status and body). A caller that leaves does not
//! cancel the batch for the others. Statistics are shared out by input:
//! `prompt_eval_count` in proportion, durations as measured for the
//! batch.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use corral_batch::{BatchConfig, BatchLayer};
//! use corral_core::{Body, Endpoint, RequestMeta};
//! use http_body_util::BodyExt;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // An embedding model: one vector per input, one call counted.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(BatchLayer::new(&BatchConfig::default()).unwrap())
//!     .service(service_fn(move |request: http::Request<Body>| {
//!         counted.fetch_add(1, Ordering::SeqCst);
//!         let asked: serde_json::Value = serde_json::from_slice(request.body().buffered().unwrap()).unwrap();
//!         let inputs = asked["input"].as_array().map_or(1, |a| a.len());
//!         let vectors: Vec<Vec<f32>> = (0..inputs).map(|i| vec![i as f32]).collect();
//!         let answer = serde_json::json!({"model": "nomic-embed-text", "embeddings": vectors});
//!         async move {
//!             Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer.to_string()))))
//!         }
//!     }));
//! let embed = |text: &str| {
//!     let json = serde_json::json!({"model": "nomic-embed-text", "input": text}).to_string();
//!     let mut request = http::Request::post("/api/embed").body(Body::from(json)).unwrap();
//!     request.extensions_mut().insert(RequestMeta::new("r".into(), Endpoint::Embed).with_model(Some("nomic-embed-text".into())));
//!     request
//! };
//! let (a, b) = tokio::join!(service.clone().oneshot(embed("one")), service.oneshot(embed("two")));
//! for answer in [a.unwrap(), b.unwrap()] {
//!     let doc: serde_json::Value = serde_json::from_slice(&answer.into_body().collect().await.unwrap().to_bytes()).unwrap();
//!     assert_eq!(doc["embeddings"].as_array().unwrap().len(), 1, "each its own slice");
//! }
//! assert_eq!(calls.load(Ordering::SeqCst), 1, "two callers, one upstream call");
//! # }
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: it merges the buffered bodies
//! of single embeddings into one.

mod batcher;
mod config;
pub mod metrics;

pub use batcher::{BatchLayer, BatchService, ResponseFuture};
pub use config::BatchConfig;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[];
