//! `corral-shed`: backpressure in front of an LLM server.
//!
//! Bounds how many inference requests wait for the upstream and decides,
//! when the bound is reached, who is refused: the lowest priorities
//! first, at once, while the others may wait a little for room (the
//! design's backpressure pattern). Metadata reads are never shed.
//!
//! - **Queue bound**: `max_queue` waiting requests (and optionally
//!   `max_queue_bytes`). When full, priorities above `drop_above` (8, 9,
//!   10 by default) get 503 at once; the others wait up to
//!   `wait_for_space` for room, then get 503.
//! - **Delay shedding** in the manner of CoDel: when the oldest waiting
//!   request has waited longer than `codel_target` for a whole
//!   `codel_interval`, priorities above `drop_above` are refused at
//!   arrival until the delay falls under target.
//! - **Per-agent quota**: with `max_waiting_per_agent`, an agent with
//!   that many requests already waiting gets 429: its own quota, not the
//!   server's state.
//! - Every refusal is Ollama-shaped with `Retry-After` (the queue ahead
//!   over its measured drain rate) and `X-Corral-Reason: shed`, is
//!   counted by reason and priority, and is announced on the bus channel
//!   `system:backpressure` (at most once per `event_interval`, with the
//!   counts since the last one).
//!
//! The queue it watches is the scheduler's ([`corral_core::LoadCell`]),
//! the one truth of the stack; without a scheduler it counts the requests
//! it has let through whose answer has not started. The bound is soft by
//! at most the number of requests admitted at the same instant on
//! different threads.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::{Endpoint, Priority, RequestMeta};
//! use corral_shed::{ShedConfig, ShedLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Room for one waiting; above priority 7 refused at once when full.
//! let config = ShedConfig { max_queue: 1, drop_above: 7, ..ShedConfig::default() };
//! let service = ServiceBuilder::new()
//!     .layer(ShedLayer::new(&config).unwrap())
//!     .service(service_fn(|_request: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("generated")))
//!     }));
//! let ask = |priority| {
//!     let mut request = http::Request::post("/api/generate").body(String::new()).unwrap();
//!     let meta = RequestMeta::new("r".into(), Endpoint::Generate)
//!         .with_priority(Priority::new(priority).unwrap());
//!     request.extensions_mut().insert(meta);
//!     request
//! };
//! // Without a scheduler it counts what it lets through: one is in.
//! let first = service.clone().oneshot(ask(5)).await.unwrap();
//! assert_eq!(first.body(), "generated");
//! # }
//! ```
//!
//! # Bodies
//!
//! Generic over the request and response bodies.

mod config;
mod error;
mod future;
mod gate;
mod layer;
pub mod metrics;
mod service;

pub use config::{
    ShedConfig, DEFAULT_CODEL_INTERVAL, DEFAULT_CODEL_TARGET, DEFAULT_DROP_ABOVE,
    DEFAULT_EVENT_INTERVAL, DEFAULT_MAX_QUEUE, DEFAULT_WAIT_FOR_SPACE,
};
pub use error::{Shed, ShedReason};
pub use future::ResponseFuture;
pub use layer::ShedLayer;
pub use service::ShedService;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[corral_core::as_refusal::<Shed>];
