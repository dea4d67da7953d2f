//! `corral-cache`: answers that need not be generated twice.
//!
//! - **What is cached**: only what is deterministic: embeddings always;
//!   generations (generate, chat, and the OpenAI completions) when
//!   `temperature` is 0 or a `seed` is set, or when the client asks with
//!   `X-Corral-Cache: force`. `X-Corral-Cache: bypass` and
//!   `Cache-Control: no-store` skip the cache.
//! - **Key**: a SHA-256 of the canonical JSON of what determines the
//!   answer (every field, keys sorted, but `stream`, `keep_alive` and
//!   `stream_options`), with the endpoint, optionally namespaced per agent
//!   or class so tenants never see each other's answers.
//! - **One entry, both forms**: a generation is kept as its text and final
//!   fields and served streamed (NDJSON, or SSE for `/v1`, one whole line
//!   per frame) or whole, whichever the request asks.
//! - **Coalescing**: identical requests that arrive while one is in
//!   flight join it and receive the same bytes, live; a late joiner first
//!   gets the chunks already produced. The call runs on its own task: if
//!   the first client leaves it goes on for the others, and it stops when
//!   nobody listens.
//! - **Bounded**: in memory by `max_bytes` (moka, with a weigher; least
//!   recently used go first), behind a [`CacheStore`] trait; with the
//!   `redis` feature, `RedisCache` shares answers between replicas (this
//!   replica's memory in front). Lifetimes per endpoint, stretched by
//!   degradation, which may also serve stale entries.
//!
//! Answers say `X-Corral-Cache: hit | stale | miss | coalesced | bypass`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use corral_cache::{CacheConfig, CacheLayer};
//! use corral_core::{Body, Endpoint, RequestMeta};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(CacheLayer::new(&CacheConfig::default()).unwrap())
//!     .service(service_fn(move |_request: http::Request<Body>| {
//!         counted.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             let answer = r#"{"model":"llama3","response":"Rayleigh.","done":true,"eval_count":2}"#;
//!             let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer)));
//!             response.headers_mut().insert("content-type", "application/json".parse().unwrap());
//!             Ok::<_, std::convert::Infallible>(response)
//!         }
//!     }));
//! let ask = || {
//!     let json = r#"{"model":"llama3","prompt":"why blue?","stream":false,"options":{"temperature":0}}"#;
//!     let mut request = http::Request::post("/api/generate").body(Body::from(json)).unwrap();
//!     let mut meta = RequestMeta::new("r".into(), Endpoint::Generate).with_model(Some("llama3".into()));
//!     meta.stream = false;
//!     meta.generation.temperature = Some(0.0);
//!     request.extensions_mut().insert(meta);
//!     request
//! };
//! let first = service.clone().oneshot(ask()).await.unwrap();
//! assert_eq!(first.headers()["x-corral-cache"], "miss");
//! http_body_util::BodyExt::collect(first.into_body()).await.unwrap(); // kept once read whole
//! let again = service.oneshot(ask()).await.unwrap();
//! assert_eq!(again.headers()["x-corral-cache"], "hit");
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: the key is made from the
//! buffered body.

mod answer;
mod coalesce;
mod config;
mod key;
mod layer;
pub mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

pub use answer::Answer;
pub use config::{CacheConfig, Namespace, DEFAULT_MAX_BYTES, DEFAULT_STALE_FOR, DEFAULT_TTL};
pub use key::{Key, X_CORRAL_CACHE};
pub use layer::CacheLayer;
#[cfg(feature = "redis")]
pub use redis::RedisCache;
pub use service::{CacheService, ResponseFuture};
pub use store::{CacheStore, Claim, ClaimGuard, Entry, Lookup, MemoryCache};

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[];
