//! `corral-classify`: who is asking, for what, with what priority.
//!
//! The first layer of every Corral stack. It reads an Ollama or
//! OpenAI-compatible request once and stores a
//! [`RequestMeta`](corral_core::RequestMeta) in its extensions, so every
//! layer below (priority, shedding, rate limits, cache) decides from the
//! same facts without parsing the body again.
//!
//! # What it reads
//!
//! - **Identity**: `Authorization: Bearer KEY` mapped to an agent, else an
//!   `X-Agent-Id` header, else `anonymous`. An agent configured with a key
//!   is recognised by the key only. With `require_key`, a request without
//!   a known key is refused (401).
//! - **Class and priority**: the agent's class gives a default priority and
//!   the range (`[highest, lowest]`) an `X-Priority` request is moved into.
//!   Unlisted agents are in the `default` class: priority 5, any of 1..=10.
//! - **Deadline**: `X-Deadline-Ms`, milliseconds from arrival.
//! - **Body**: JSON bodies are read into memory, bounded by
//!   `max_request_bytes` (413 beyond, refused from `Content-Length` before
//!   reading when declared); inference bodies must be a JSON object naming
//!   a model (400 with what is wrong otherwise, as Ollama says it). Model,
//!   `stream` (generate and chat stream unless `"stream": false`; `/v1`
//!   only when `true`), `num_predict`/`max_tokens`, `temperature` and
//!   `seed` are read in one pass that skips every other field. Blob
//!   uploads and unknown paths are streamed through, never held.
//!
//! # Cost
//!
//! One hash-map lookup for the agent, one SHA-256 of the key when a key is
//! sent, one pass of `serde_json` over the body with borrowed strings.
//!
//! # Example
//!
//! ```
//! use corral_classify::{ClassifyConfig, ClassifyLayer};
//! use corral_core::{Body, RequestMeta};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config: ClassifyConfig = toml::from_str(r#"
//!     [[classes]]
//!     name = "batch"
//!     priority = 9
//!     priorities = [7, 10]
//!     [[agents]]
//!     id = "nightly-summarizer"
//!     class = "batch"
//! "#).unwrap();
//!
//! let service = ServiceBuilder::new()
//!     .layer(ClassifyLayer::new(&config).unwrap())
//!     .service(service_fn(|request: http::Request<Body>| async move {
//!         let meta = request.extensions().get::<RequestMeta>().unwrap();
//!         Ok::<_, std::convert::Infallible>(format!("{} {} p{}", meta.agent, meta.model_str(), meta.priority))
//!     }));
//!
//! let request = http::Request::post("/api/generate")
//!     .header("x-agent-id", "nightly-summarizer")
//!     .header("x-priority", "1") // batch may ask for 7 at best
//!     .body(Body::from(r#"{"model":"llama3","prompt":"summarize"}"#))
//!     .unwrap();
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer, "nightly-summarizer llama3 p7");
//! # }
//! ```
//!
//! # Bodies
//!
//! Needs `http::Request<corral_core::Body>`: it reads the body once
//! (bounded) and hands the bytes on buffered, for the layers below.

mod config;
mod error;
mod future;
mod identity;
mod layer;
mod overrides;
mod parse;
mod service;

pub use config::{
    AgentConfig, ClassConfig, ClassifyConfig, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_CLASS,
    DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_MESSAGES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PRIORITY,
};
pub use error::{BodyReadFailed, BodyTimedOut, BodyTooLarge, InvalidRequest, Unauthenticated};
pub use future::ResponseFuture;
pub use identity::{digest_from_hex, IssuedKey, IssuedKeys, UNKNOWN_KEYS_TOTAL};
pub use layer::{Caller, ClassifyLayer, Vouched};
pub use overrides::PriorityOverrides;
pub use service::Classify;

/// The refusals this layer answers with, for a responder
/// ([`corral_core::respond::RespondLayer::with_refusals`]).
pub const REFUSALS: &[corral_core::RefusalCast] = &[
    corral_core::as_refusal::<BodyTooLarge>,
    corral_core::as_refusal::<InvalidRequest>,
    corral_core::as_refusal::<Unauthenticated>,
    corral_core::as_refusal::<BodyReadFailed>,
    corral_core::as_refusal::<BodyTimedOut>,
];
