//! `corral-priority`: who goes next to the upstream.
//!
//! A pool of upstream permits (`capacity`, what the operator set as
//! `OLLAMA_NUM_PARALLEL`; per model where configured, or for every model
//! with `per_model`, as Ollama's parallelism is per loaded model) and the
//! order in which waiting inference requests get them. A request holds its permit
//! until its response body has been sent in full or dropped: the GPU is
//! busy for the whole generation, not just until the headers (tower's
//! `ConcurrencyLimit` frees at headers, which is wrong for streams).
//!
//! # Order of service
//!
//! 1. **Priority**, 1 (highest) to 10.
//! 2. **Aging**: a waiting request's priority rises one step per `aging`
//!    waited, so low priorities are delayed but never starved.
//! 3. **Fair share** within a priority, counted in work, not requests
//!    (the Virtual Token Counter of Sheng et al., OSDI 2024): the agent
//!    with the least weighted service goes next. Service is prompt tokens
//!    plus twice the generated tokens: estimated when the request starts
//!    (a quarter of the body's bytes, and `num_predict`/`max_tokens`),
//!    corrected from the answer's
//!    `prompt_eval_count`/`eval_count` when it ends. An agent back from
//!    idling starts at the lowest active counter, so idling banks no
//!    credit. `max_in_flight_per_agent` caps one agent's running requests.
//! 4. Arrival order.
//!
//! A request whose deadline (`X-Deadline-Ms`) passes while it waits
//! leaves the queue at once with [`DeadlineExceeded`] (504). A client
//! that disconnects leaves the queue at once (its future is dropped).
//! Only inference waits: metadata reads and model management pass
//! straight through.
//!
//! # Guarantees
//!
//! In flight never exceeds capacity; every permit comes back, whatever
//! the interleaving of grant, cancellation, deadline and completion (one
//! mutex, never held across an await; a property test drives random
//! interleavings). The scheduler's load is exposed through
//! [`corral_core::UpstreamLoad`], the one truth shedding, degradation and
//! metrics read.
//!
//! # Cost
//!
//! One lock per arrival, grant and completion. Each priority level keeps
//! its waiting agents in a sorted set by fair-share counter (then by the
//! arrival of their oldest request) and each agent's tickets by age, so
//! choosing the next request is O(log n) in the agents waiting: ~2.5 µs
//! per arrival, grant and completion with 10,000 waiting
//! (`benches/RESULTS.md`).
//!
//! # Example
//!
//! ```
//! use corral_core::{Body, Endpoint, RequestMeta};
//! use corral_priority::{PriorityConfig, PriorityLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = PriorityLayer::new(&PriorityConfig { capacity: 4, ..PriorityConfig::default() }).unwrap();
//! let scheduler = layer.scheduler().clone();
//! let service = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_request: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("{}"))))
//!     }));
//!
//! let mut request = http::Request::post("/api/generate").body(Body::from("{}")).unwrap();
//! request.extensions_mut().insert(RequestMeta::new("r1".into(), Endpoint::Generate));
//! let response = service.oneshot(request).await.unwrap();
//! assert!(response.headers().contains_key("x-corral-queue-ms"));
//! // The permit is held by the body until it ends or is dropped.
//! assert_eq!(corral_core::UpstreamLoad::snapshot(&*scheduler).in_flight, 1);
//! drop(response);
//! assert_eq!(corral_core::UpstreamLoad::snapshot(&*scheduler).in_flight, 0);
//! # }
//! ```

mod body;
mod config;
mod error;
mod future;
mod layer;
mod permit;
mod pool;
mod scheduler;
mod service;
#[cfg(feature = "redis")]
mod shared;

pub use body::{ResponseBody, Settling};
pub use config::{
    PriorityConfig, Reserve, DEFAULT_AGING, DEFAULT_CAPACITY, DEFAULT_GENERATION_TOKENS,
};
pub use error::DeadlineExceeded;
pub use future::ResponseFuture;
pub use layer::PriorityLayer;
pub use pool::Ticket;
pub use scheduler::{Acquire, Permit, Scheduler, MAX_MODEL_POOLS};
pub use service::PriorityService;
#[cfg(feature = "redis")]
pub use shared::SHARED_PERMITS_HELD;
