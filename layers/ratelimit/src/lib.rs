//! `corral-ratelimit`: per-agent and per-class quotas.
//!
//! Requests per minute and generated tokens per minute, for each agent of
//! a class (the design's opus 10/min, sonnet 20/min, system 50/min) and
//! for a class as a whole, enforced with GCRA (the algorithm of
//! `governor`, here behind a [`RateStore`] trait so the quotas can live in
//! Redis and hold across replicas; one number per key, exact at any
//! rate). Token quotas are charged from `num_predict`/`max_tokens` (or a
//! default) when the request starts and corrected from the answer's
//! `eval_count` when it ends.
//!
//! Token budgets over a UTC calendar day or month, per agent and per
//! class (`tokens_per_day`, `class_tokens_per_month`, ...), are checked
//! and charged with the quotas: a counter per window whose key names the
//! window ([`Period`]), the day read from a [`Calendar`] (the wall clock,
//! or one that follows tokio's for tests). A spent budget is 429
//! `budget_spent` until the window ends, or, in [`BudgetMode::Shadow`],
//! only counted (`corral_budget_overrun_total`) and readable through a
//! [`BudgetBook`]. A request that got no answer, or an error that
//! reports nothing, gives its up-front charge back. No date crate: the two calendar conversions are
//! Howard Hinnant's algorithms, a dozen lines, tested over four
//! centuries.
//!
//! A request over a quota gets [`RateLimited`]: 429, Ollama-shaped, with
//! `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` headers
//! (draft-ietf-httpapi-ratelimit-headers); answers that pass carry them
//! too, so an agent can pace itself. Checks are atomic as a set: a request
//! refused by its class's quota is not charged to its own. Only inference
//! is limited.
//!
//! With the `redis` feature, `RedisRates` keeps the quotas in Redis: one
//! Lua script per request checks and charges every quota on Redis' clock,
//! so an agent's quota is one quota across replicas. Nothing here is
//! `governor` itself: its state lives in process memory, and GCRA is one
//! number per key, simple to keep in a script.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::{ClassName, Endpoint, Refusal, RequestMeta};
//! use corral_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let config: RateLimitConfig = toml::from_str("[classes.opus]\nrequests_per_minute = 2").unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(&config).unwrap())
//!     .service(service_fn(|_request: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     }));
//! let ask = || {
//!     let mut request = http::Request::post("/api/chat").body(String::new()).unwrap();
//!     let meta = RequestMeta::new("r".into(), Endpoint::Chat)
//!         .with_agent("planner".into(), ClassName::from("opus"), true);
//!     request.extensions_mut().insert(meta);
//!     request
//! };
//! for _ in 0..2 {
//!     let answer = service.clone().oneshot(ask()).await.unwrap();
//!     assert!(answer.headers().contains_key("ratelimit"));
//! }
//! let err = service.oneshot(ask()).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(limited.status(), 429);
//! assert!(limited.retry_after().is_some());
//! # }
//! ```
//!
//! # Bodies
//!
//! Generic over the request and response bodies.

mod body;
mod book;
mod budget;
mod config;
mod error;
mod gcra;
pub mod headers;
mod layer;
pub mod metrics;
mod plan;
#[cfg(feature = "redis")]
mod redis;
mod service;

pub use body::{Correction, ResponseBody};
pub use book::{BudgetBook, BudgetStanding};
pub use budget::{Budget, BudgetMode, Calendar, Period};
pub use config::{Limits, RateLimitConfig, DEFAULT_GENERATION_TOKENS};
pub use error::RateLimited;
pub use gcra::{Check, Checked, Limit, MemoryRates, Quota, RateStore, Standing, Verdict};
pub use layer::RateLimitLayer;
#[cfg(feature = "redis")]
pub use redis::RedisRates;
pub use service::{RateLimitService, ResponseFuture};

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[corral_core::as_refusal::<RateLimited>];
