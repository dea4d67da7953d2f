//! `corral-breaker`: fail fast while the upstream is failing.
//!
//! One breaker for the upstream, or one per model (`per_model`). It trips
//! on `consecutive_failures` in a row (the design's 5), on a
//! `failure_rate` over a sliding window (the last `window_calls` calls,
//! or those of the last `window_time`, once there are `min_calls`), and
//! optionally on a rate of slow calls (first byte later than
//! `slow_call_duration`). What counts as a failure is corral-core's one
//! classifier: 5xx, timeouts, connection errors and broken streams do;
//! 4xx and clients that leave do not.
//!
//! Open, every request fails fast with [`BreakerOpen`]: 503,
//! Ollama-shaped, `Retry-After` = the time left open,
//! `X-Corral-Reason: breaker_open`. After `open_for` (the design's 60 s,
//! growing by `open_backoff` on trips in a row, up to `max_open_for`) it
//! turns half open and lets `half_open_probes` requests through: all
//! succeed, it closes; one fails, it reopens. Each transition is logged
//! once, is the metric `corral_circuit_breaker_state` (0 closed, 1 half
//! open, 2 open) and an event on the bus channel `ollama:breaker:state`.
//!
//! Put it inside the retry layer, so each attempt counts: a retry that
//! abandons an attempt for time marks it with
//! [`AttemptTimedOut`](corral_core::AttemptTimedOut), and the breaker
//! counts that drop as a timeout rather than a client leaving.
//!
//! # Example
//!
//! ```
//! use corral_breaker::{BreakerConfig, BreakerLayer};
//! use corral_core::Body;
//! use tower::{service_fn, ServiceBuilder};
//!
//! let service = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(&BreakerConfig::default()).unwrap())
//!     .service(service_fn(|_request: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! # drop(service);
//! ```
//!
//! # Bodies
//!
//! Generic over the request and response bodies.

mod body;
mod breakers;
mod circuit;
mod config;
mod error;
mod future;
mod layer;
pub mod metrics;
mod service;

pub use body::ResponseBody;
pub use circuit::{Admission, Circuit, State, Transition};
pub use config::{BreakerConfig, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_OPEN_FOR};
pub use error::BreakerOpen;
pub use future::{Call, ResponseFuture};
pub use layer::BreakerLayer;
pub use service::BreakerService;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[corral_core::as_refusal::<BreakerOpen>];
