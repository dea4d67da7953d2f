//! `corral-auth`: who may ask for what, and proof that they asked.
//!
//! Sits after `classify` (which identifies the agent by its API key or
//! `X-Agent-Id`) and checks, per request:
//!
//! 1. **Permissions**: the agent's class may call this endpoint and use
//!    this model. By default a class may call inference and metadata
//!    endpoints, not model management (`/api/pull`, `/api/delete`,
//!    `/api/create`, ...) nor unknown paths: 403 [`Forbidden`].
//! 2. **Signature**, as the design's message validation: an agent with a
//!    signing secret signs each request with HMAC-SHA256 over its id, the
//!    method, the path, `X-Timestamp`, `X-Request-Id` and the body's
//!    SHA-256 ([`Signed`] has the exact string). Corral refuses a bad or
//!    missing signature, a timestamp more than `freshness` (5 minutes)
//!    from its clock, and a request id the agent already used within the
//!    window (a replay), each 401 [`SignatureRefused`] with its own
//!    reason. Request ids are remembered in a bounded [`ReplayStore`]:
//!    [`MemoryReplay`] here, `RedisReplay` (feature `redis`) when
//!    replicas share state.
//!
//! HMAC comes from the RustCrypto `hmac` and `sha2` crates, whose
//! `verify_slice` compares in constant time.
//!
//! ```
//! use corral_auth::{AuthConfig, AuthLayer, Signed};
//! use corral_core::{Body, Endpoint, RequestMeta};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config: AuthConfig = toml::from_str(r#"
//!     [secrets]
//!     planner-1 = { value = "a secret of sixteen bytes or more" }
//! "#).unwrap();
//! let service = AuthLayer::new(&config).unwrap().layer(service_fn(|_request: http::Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//!
//! let body = br#"{"model":"llama3","prompt":"hi"}"#;
//! let timestamp = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
//! let signature = Signed {
//!     agent: "planner-1",
//!     method: "POST",
//!     path_and_query: "/api/generate",
//!     timestamp: &timestamp,
//!     request_id: "req-1",
//!     body,
//! }
//! .sign(b"a secret of sixteen bytes or more");
//! let mut request = http::Request::post("/api/generate")
//!     .header("x-timestamp", &timestamp)
//!     .header("x-request-id", "req-1")
//!     .header("x-signature", signature)
//!     .body(Body::from(bytes::Bytes::from_static(body)))
//!     .unwrap();
//! request.extensions_mut().insert(
//!     RequestMeta::new("req-1".into(), Endpoint::Generate)
//!         .with_agent("planner-1".into(), "opus".into(), true),
//! );
//! assert!(service.oneshot(request).await.is_ok());
//! # });
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: a signature covers the
//! buffered body.

mod config;
mod error;
mod guard;
mod layer;
pub mod metrics;
mod permissions;
#[cfg(feature = "redis")]
mod redis_replay;
mod replay;
mod service;
mod sign;

pub use config::{
    AuthConfig, ClassPermissions, Secret, DEFAULT_ENDPOINTS, DEFAULT_FRESHNESS,
    DEFAULT_REPLAY_MEMORY,
};
pub use error::{Forbidden, SignatureProblem, SignatureRefused};
pub use layer::AuthLayer;
#[cfg(feature = "redis")]
pub use redis_replay::RedisReplay;
pub use replay::{MemoryReplay, Remembered, ReplayStore};
pub use service::{AuthService, ResponseFuture};
pub use sign::{key_digest, Signed, SCHEME};

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[
    corral_core::as_refusal::<Forbidden>,
    corral_core::as_refusal::<SignatureRefused>,
];
