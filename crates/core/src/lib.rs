//! The shared vocabulary of Corral's layers.
//!
//! Every Corral layer depends on this crate and on no other layer, so
//! layers can be stacked in any order and imported one at a time. What a
//! layer needs to know about a request it reads from [`RequestMeta`], which
//! the `classify` layer stores in the request's extensions after reading
//! the body once; nothing below it parses the body again.
//!
//! - [`Body`]: the request body the stack carries, either buffered (and so
//!   replayable by a retry) or streamed through (blob uploads).
//! - [`BoxBody`]: the response body every layer hands back.
//! - [`WatchBody`]: tells a layer's [`OnEnd`] guard how a body ended
//!   (complete, failed, cancelled), once.
//! - [`Endpoint`]: which Ollama or OpenAI-compatible call a request is.
//! - [`RequestMeta`]: who asks, with what priority, for which model, until
//!   when; [`SetMetaLayer`] gives it to requests in a service that does not
//!   use `corral-classify`.
//! - [`Refusal`]: what a layer's refusal tells the proxy (status, reason,
//!   `Retry-After`); [`ErrorBody`] renders it the way Ollama would.
//! - [`respond`]: refusals and mid-stream failures become answers in the
//!   client's API shape ([`respond::RespondLayer`] for any tower stack).
//! - [`ConfigError`]: a configuration refused with the key and the reason.
//! - [`Bus`]: state changes layers announce ([`MemoryBus`] in one
//!   process); with the `redis` feature, `RedisState` (the one Redis
//!   connection a replica's layers share: the `redis` crate's reconnecting
//!   `ConnectionManager` over RESP3, commands with a deadline, scripts,
//!   pub/sub, whether Redis answers) and `RedisBus` (the bus across
//!   replicas, its settings kept in Redis).
//!
//! ```
//! use corral_core::{Endpoint, EndpointKind};
//! use http::Method;
//!
//! let endpoint = Endpoint::from_request(&Method::POST, "/api/chat");
//! assert_eq!(endpoint, Endpoint::Chat);
//! assert_eq!(endpoint.kind(), EndpointKind::Inference);
//! // Ollama streams chat unless the request says `"stream": false`.
//! assert!(endpoint.streams_by_default());
//! ```

mod admit;
mod body;
mod bus;
mod carried;
mod clock;
pub mod compat;
mod config;
mod degradation;
mod endpoint;
mod eos;
mod error;
mod event;
pub mod headers;
mod ids;
mod json;
mod load;
mod lock;
mod macros;
mod meta;
mod model_name;
pub mod net;
mod outcome;
mod ready;
#[cfg(feature = "redis")]
mod redis_bus;
#[cfg(feature = "redis")]
mod redis_state;
mod refusal;
pub mod respond;
mod set_meta;
mod terminal;
mod usage;

pub use admit::AdmitThenCall;
pub use body::{boxed, empty, full, Body, BoxBody};
pub use bus::{channels, Bus, BusMessage, MemoryBus};
pub use carried::{Dispatched, Vouched};
pub use clock::{rfc3339_now, unix_now, unix_now_f64};
pub use config::ConfigError;
pub use degradation::{Degradation, Level};
pub use endpoint::{ApiFamily, Endpoint, EndpointKind};
pub use eos::{End, OnEnd, WatchBody};
pub use error::{stream_error_frame, ErrorBody};
pub use event::{Event, EventSink, EventValue, NewEvent};
pub use ids::secret_uuid;
pub use json::go_key_fold;
pub use load::{LoadCell, LoadSnapshot, UpstreamLoad};
pub use lock::lock;
pub use meta::{
    AgentId, ClassName, GenerationParams, MetaSlot, Priority, PriorityError, RequestId, RequestMeta,
};
pub use model_name::canonical_model;
pub use outcome::{
    classify_error, classify_status, AttemptTimedOut, Failure, Outcome, SharedError, StreamBroke,
    Timeout, TimeoutKind, UpstreamFailed,
};
pub use ready::take_ready;
#[cfg(feature = "redis")]
pub use redis;
#[cfg(feature = "redis")]
pub use redis_bus::{RedisBus, BUS_DROPPED_TOTAL};
#[cfg(feature = "redis")]
pub use redis_state::{
    Pushed, RedisState, StateUnavailable, STATE_BACKEND_ERRORS_TOTAL, STATE_BACKEND_UP,
};
pub use refusal::{as_refusal, find_refusal, Refusal, RefusalCast};
pub use set_meta::{SetMeta, SetMetaLayer, REQUESTS_WITHOUT_META_TOTAL};
pub use usage::Usage;

/// What the macros expand to: paths that work in a crate that does not
/// depend on `metrics` or `http` itself.
#[doc(hidden)]
pub mod __private {
    pub use http;
    pub use metrics;
}

/// The error type between layers: any error, boxed.
///
/// Layers return their refusals boxed in this type so that the stack's
/// error type stays the same whatever the order of the layers; the proxy
/// finds the refusal again with `err.downcast_ref()` or [`find_refusal`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The accessors every Corral service has, as tower-http's do: put
/// `corral_core::define_inner_service_accessors!();` in an
/// `impl<S> Service<S>` block of a struct whose wrapped service is its
/// `inner` field.
///
/// ```
/// struct Counting<S> { inner: S }
/// impl<S> Counting<S> {
///     corral_core::define_inner_service_accessors!();
/// }
/// let mut counting = Counting { inner: 7 };
/// *counting.get_mut() += 1;
/// assert_eq!(*counting.get_ref(), 8);
/// assert_eq!(counting.into_inner(), 8);
/// ```
#[macro_export]
macro_rules! define_inner_service_accessors {
    () => {
        /// The service inside.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The service inside, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The service inside, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
