//! `corral-bulkhead`: isolation by compartment.
//!
//! Named compartments with their own concurrency limits (the design's
//! `opus_agents` 10, `sonnet_agents` 20, `critical_ops` 5, `batch_ops`
//! 15), and rules that put a request in one by its class, agent, endpoint
//! or model, first match wins. A full compartment refuses at once, or
//! lets up to `max_waiting` requests wait up to `max_wait`; then
//! [`CompartmentFull`] (503, `X-Corral-Reason: bulkhead_full`). A slot is
//! held until the response body ends, so a compartment of streams is
//! really bounded. Requests no rule matches are not confined; by default
//! only inference is.
//!
//! Built on tokio's fair semaphore: waiting requests get slots in arrival
//! order. Per-compartment saturation (in use / capacity) is the metric
//! `corral_bulkhead_saturation`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_bulkhead::{BulkheadConfig, BulkheadLayer, CompartmentFull};
//! use corral_core::{ClassName, Endpoint, RequestMeta};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let config: BulkheadConfig = toml::from_str(r#"
//!     [[compartments]]
//!     name = "batch_ops"
//!     max_concurrent = 1
//!     [[rules]]
//!     compartment = "batch_ops"
//!     class = "batch"
//! "#).unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(&config).unwrap())
//!     .service(service_fn(|_request: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("{}"))))
//!     }));
//! let batch = || {
//!     let mut request = http::Request::post("/api/generate").body(String::new()).unwrap();
//!     let meta = RequestMeta::new("r".into(), Endpoint::Generate)
//!         .with_agent("nightly".into(), ClassName::from("batch"), false);
//!     request.extensions_mut().insert(meta);
//!     request
//! };
//! // The first holds the compartment's one slot while its body is read.
//! let running = service.clone().oneshot(batch()).await.unwrap();
//! let err = service.clone().oneshot(batch()).await.unwrap_err();
//! assert!(err.is::<CompartmentFull>());
//! drop(running); // the slot comes back with the body
//! assert!(service.oneshot(batch()).await.is_ok());
//! # }
//! ```
//!
//! # Bodies
//!
//! Generic over the request and response bodies.

mod body;
mod compartment;
mod config;
mod error;
mod future;
mod layer;
pub mod metrics;
mod service;

pub use body::ResponseBody;
pub use compartment::Slot;
pub use config::{BulkheadConfig, CompartmentConfig, RuleConfig};
pub use error::CompartmentFull;
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
pub use service::BulkheadService;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[corral_core::as_refusal::<CompartmentFull>];
