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
//! # Reserve, and lending it
//!
//! `reserve = { permits, up_to_priority, lend_within }` holds the last
//! permits of each pool back for priorities up to `up_to_priority`, so an
//! urgent request finds one free instead of waiting for a long generation
//! to end. Held back and idle, they would cost everyone else their share
//! of the upstream whenever no urgent request runs, so a reserved permit
//! is **lent** while no request of the reserve's priorities waits, to the
//! next request in the order of service predicted to give it back within
//! `lend_within` (250 ms by default; `0s` keeps the reserve strict).
//!
//! The prediction comes from what the pool measures: how long each permit
//! was held, from grant to release. An agent's exponentially weighted
//! average hold per unit of cost, times the request's cost estimate,
//! predicts its next request when it arrives (one asking for ten times
//! the tokens is predicted ten times longer); a request whose agent has no
//! history is judged, when a permit frees, by the pool's average hold; a
//! pool that has never had a permit back lends nothing. The long
//! generations the reserve exists for are predicted long and never lent
//! it.
//!
//! The reserve is counted, not named: whichever permit frees next while
//! the pool is down to its reserve goes to a request of the reserve's
//! priorities if one waits. An urgent arrival waits for the first of the
//! running requests to end, one of which was predicted to end within
//! `lend_within`: that is what it may wait, more only if a prediction
//! was wrong. Lends are counted in
//! [`metrics::RESERVE_LENT_TOTAL`]. With shared state the same rule runs
//! in the grant script: the replica marks each ticket with its
//! prediction, Redis keeps the pool's average hold.
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
//! The maps keyed by what Corral numbers itself (the tickets of waiting
//! and running requests) or by the configuration (pools by model) hash
//! with `foldhash` rather than std's SipHash (a request makes several
//! lookups in them: ~1,500 of the default stack's ~113,000 instructions
//! a request under callgrind). Maps keyed by what clients send (agent
//! names, request ids) keep SipHash: some hold up to 10,000 entries for
//! the process's life behind the scheduler's lock, and foldhash does not
//! claim to resist an attacker who can learn its seed by timing.
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
//!
//! # Bodies
//!
//! Generic over the request and response bodies: it reads only the request's
//! `RequestMeta` (and, without one, the body's declared size).

mod body;
mod config;
mod error;
mod estimate;
mod future;
mod layer;
mod lengths;
mod map;
pub mod metrics;
mod models;
mod permit;
mod pool;
#[cfg(feature = "redis")]
mod redis;
mod scheduler;
mod service;

#[cfg(feature = "redis")]
pub use self::redis::SHARED_PERMITS_HELD;
pub use body::{ResponseBody, Settling};
pub use config::{
    PriorityConfig, Reserve, DEFAULT_AGING, DEFAULT_CAPACITY, DEFAULT_GENERATION_TOKENS,
    DEFAULT_LEND_WITHIN, MAX_LEND_WITHIN,
};
pub use error::{DeadlineExceeded, DeadlineUnreachable, ModelNotServed, TooManyModels};
pub use estimate::Estimate;
pub use future::ResponseFuture;
pub use layer::PriorityLayer;
pub use models::{IDLE_BEFORE_EVICTION, MAX_MODEL_POOLS};
pub use pool::Ticket;
pub use scheduler::{Acquire, Admitted, Permit, Scheduler, Waiter};
pub use service::PriorityService;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[
    corral_core::as_refusal::<DeadlineExceeded>,
    corral_core::as_refusal::<DeadlineUnreachable>,
    corral_core::as_refusal::<ModelNotServed>,
    corral_core::as_refusal::<TooManyModels>,
];
