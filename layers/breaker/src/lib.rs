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
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_breaker::{BreakerConfig, BreakerLayer, BreakerOpen};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! // An upstream that answers 503: two failures in a row open the breaker.
//! let config = BreakerConfig { consecutive_failures: Some(2), ..BreakerConfig::default() };
//! let mut service = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(&config).unwrap())
//!     .service(service_fn(|_request: http::Request<String>| async {
//!         let mut busy = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
//!         *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!         Ok::<_, std::convert::Infallible>(busy)
//!     }));
//! for _ in 0..2 {
//!     let answer = service.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
//!     assert_eq!(answer.status(), 503);
//! }
//! // Open: refused at once, without calling the upstream.
//! let err = service.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap_err();
//! assert!(err.is::<BreakerOpen>());
//! # }
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
