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
//! use corral_batch::{BatchConfig, BatchLayer};
//! use corral_core::Body;
//! use tower::{service_fn, ServiceBuilder};
//!
//! let batch = BatchLayer::new(&BatchConfig::default()).unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(batch)
//!     .service(service_fn(|_request: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! # drop(service);
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
