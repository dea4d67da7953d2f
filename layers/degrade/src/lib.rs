//! `corral-degrade`: bend before breaking.
//!
//! A level, Normal → L1 → L2 → Critical, follows the upstream's load with
//! hysteresis (the design's thresholds: up at 60, 80, 95 %; down at 50,
//! 70, 90 %). Load is the scheduler's work in the system (in flight plus
//! waiting) over `capacity × saturation`, smoothed; an operator can force
//! a level and release it ([`Controller::force`]).
//!
//! What each level does is configuration, with the design's defaults:
//!
//! - **L1**: `num_predict`/`max_tokens` capped (512); cache lifetimes
//!   stretched.
//! - **L2**: as L1, and non-critical generations go to a smaller model
//!   (`tinyllama`), stale cache entries are served, priorities above a
//!   threshold are refused.
//! - **Critical**: only priorities up to a threshold are processed; the
//!   rest get the configured default answer for their endpoint (in its
//!   own shape, streamed or not) or 503 with `Retry-After`.
//!
//! Classes in `critical_classes` are never rewritten nor refused. Every
//! degraded answer says so: `X-Corral-Degraded: L2`, and what changed
//! (`X-Corral-Model-Rewrite: llama3->tinyllama`, `X-Corral-Token-Cap`);
//! a default answer also carries `X-Corral-Answer: default`.
//! The cache below learns the level from a
//! [`Degradation`](corral_core::Degradation) in the request's extensions.
//! The level is the metric `corral_degradation_level`; each change is
//! logged once and published on `system:degradation:level`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::{Body, Endpoint, Priority, RequestMeta};
//! use corral_degrade::{DegradeConfig, DegradeLayer, Degraded};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let config = DegradeConfig { l2_refuse_above: Some(7), ..DegradeConfig::default() };
//! let degrade = DegradeLayer::new(&config).unwrap();
//! let control = degrade.controller().clone();
//! let service = ServiceBuilder::new()
//!     .layer(degrade)
//!     .service(service_fn(|_request: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! let ask = |priority| {
//!     let mut request = http::Request::post("/api/chat").body(Body::from("{}")).unwrap();
//!     let meta = RequestMeta::new("r".into(), Endpoint::Chat).with_priority(Priority::new(priority).unwrap());
//!     request.extensions_mut().insert(meta);
//!     request
//! };
//! // The operator forces L2: priorities above 7 are refused, the rest served.
//! control.force(Some(corral_core::Level::L2));
//! let err = service.clone().oneshot(ask(9)).await.unwrap_err();
//! assert!(err.is::<Degraded>());
//! assert!(service.oneshot(ask(3)).await.is_ok());
//! # }
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: it rewrites the buffered body
//! (a token cap, a smaller model).

mod answers;
mod config;
mod controller;
mod error;
mod layer;
mod levels;
pub mod metrics;
mod service;
mod treatment;
mod ttft;

pub use config::DegradeConfig;
pub use controller::{Controller, Status};
pub use error::Degraded;
pub use layer::DegradeLayer;
pub use levels::{Change, Levels};
pub use service::{
    DegradeService, ResponseBody, ResponseFuture, X_CORRAL_ANSWER, X_CORRAL_DEGRADED,
    X_CORRAL_MODEL_REWRITE, X_CORRAL_TOKEN_CAP,
};

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[corral_core::as_refusal::<Degraded>];
