//! `corral-registry`: agents announce what they can do and where to reach
//! them; others find the live ones by capability.
//!
//! An agent puts an [`Entry`] (its capabilities, models, an `http(s)`
//! endpoint, a TTL and free metadata) and renews it with heartbeats; an
//! entry whose TTL passes without one expires, and is never listed
//! again. [`Registry::find`] lists the live entries that can do
//! something. The proxy serves it as `/corral/registry`.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use corral_core::{EventSink, NewEvent};
//! use corral_registry::{Entry, Registry, RegistryConfig};
//!
//! #[derive(Default)]
//! struct Kinds(Mutex<Vec<&'static str>>);
//! impl EventSink for Kinds {
//!     fn record(&self, event: NewEvent) {
//!         self.0.lock().unwrap().push(event.kind);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let events = Arc::new(Kinds::default());
//! let registry = Registry::memory(RegistryConfig::default(), events.clone()).unwrap();
//! let ttl = Duration::from_secs(10);
//! let entry = Entry::new("summarizer-1", "http://summarizer.internal:8080", ttl).with_capabilities(["summarize"]);
//! assert!(registry.put(entry).await.unwrap().joined());
//!
//! let found = registry.find(Some("summarize")).await;
//! assert_eq!(found[0].agent, "summarizer-1");
//! assert_eq!(found[0].endpoint, "http://summarizer.internal:8080");
//! assert!(registry.find(Some("translate")).await.is_empty());
//!
//! // No heartbeat for longer than the TTL: gone, and the sweep says so.
//! tokio::time::sleep(Duration::from_secs(11)).await;
//! assert!(registry.find(Some("summarize")).await.is_empty());
//! assert_eq!(registry.sweep().await.len(), 1);
//! assert_eq!(*events.0.lock().unwrap(), ["registry_joined", "registry_expired"]);
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Expired means unlisted.** [`Registry::find`], [`Registry::get`]
//!   and [`Registry::heartbeat`] decide by the deadline itself (memory:
//!   tokio's clock; Redis: the key's own TTL), never by when the sweeper
//!   last ran. A heartbeat for an expired entry answers `None`: the
//!   agent must `put` again, and rejoins.
//! - **Renewals keep `registered_at`.** A `put` or heartbeat before
//!   expiry renews; a `put` replaces the entry whole. A new
//!   `registered_at` means the agent left or expired and came back.
//! - **Events**, through the [`EventSink`](corral_core::EventSink) given:
//!   `registry_joined` (a `put` of an agent not listed), `registry_left`
//!   (a `remove` of a live one) and `registry_expired` (found by a
//!   sweep, within `sweep_interval` of the expiry). Each carries the
//!   agent, its `capabilities` and `registered_at`; a join also its
//!   `models`, `endpoint` and `ttl_secs`, an expiry its `expires_at`.
//! - **Bounded.** At most `max_agents` live agents (a new one beyond is
//!   refused with [`RegistryError::Full`]), TTLs at most `max_ttl`, and
//!   each entry's lists, names and metadata have limits
//!   ([`MAX_CAPABILITIES`], [`MAX_METADATA_BYTES`], ...).
//! - **No private endpoints written out.** An endpoint whose host is a
//!   loopback, private, link-local or metadata address (`127.0.0.1`,
//!   `10.0.0.7`, `169.254.169.254`, `[::1]`) is refused with
//!   [`RegistryError::Invalid`] naming `endpoint`, unless
//!   `allow_private_endpoints`: others, and the proxy's sagas, call it.
//!   So is `localhost`; other names are not resolved.
//! - **Who put it.** [`Entry::authenticated`] says whether the agent
//!   proved itself with a key; the caller sets it
//!   ([`Entry::with_authenticated`]), and `require_key` is for the
//!   caller (the proxy) to enforce: this crate does not identify agents.
//!
//! # Memory or Redis
//!
//! [`Registry::memory`] keeps entries in this process. [`Registry::redis`]
//! keeps one key per agent with Redis's own TTL (`SET ... PX`) under the
//! deployment's key prefix, so every replica sharing the Redis sees the
//! same agents; the entries themselves are in a hash, kept past their
//! expiry until it is told, and a sorted set orders the agents by
//! deadline. A sweep is one script that takes out the agents past their
//! deadline whose key is gone and answers them: whichever replica's
//! sweep takes an expiry out records it, so it is recorded once. An
//! entry that expires and rejoins between two sweeps is a new
//! registration (a new `registered_at`): with either backend, its
//! expiry is recorded as well as its join (with Redis, by the `put`
//! that rejoins it, which takes the old registration out). While Redis
//! does not answer, calls fail with [`RegistryError::Unavailable`]
//! (`find` answers none) and sweeps are skipped: nothing is called
//! expired for lack of an answer, and nothing is taken out until a
//! sweep's script runs.
//!
//! # Cost
//!
//! Memory: a hash map under a lock; a put, heartbeat or lookup of one
//! agent is O(1), `find` and a sweep read every entry. Redis: one script
//! call per put, heartbeat, remove or get, O(log n); a sweep finds the
//! expired with one range query on the deadlines (O(log n) plus the
//! expired), and reads every entry again, for the gauge, only when a
//! join, replacement, departure or expiry happened since this replica
//! last read them (a shared version counter says). `find` reads every
//! entry, so a few thousand agents are fine, a million are not what
//! this is for. A join or departure wakes the
//! sweeper (for the gauge) 100 ms later, so a burst of them shares one
//! sweep.
//!
//! # Metrics
//!
//! [`metrics::REGISTRY_AGENTS`] (`corral_registry_agents{capability}`),
//! set at each sweep and after each join or departure; with Redis every
//! replica reports the shared count, so aggregate with `max by
//! (capability)`. Agents name capabilities, so at most
//! [`MAX_CAPABILITY_LABELS`] (64) get a label of their own, the most
//! listed first; agents listing the others are counted under
//! [`OTHER_CAPABILITIES`] (`other`). A label once given stays, at 0
//! when no live agent lists it (the metrics facade cannot drop a
//! series), so the series stay bounded; replicas may give different
//! capabilities their labels. [`metrics::REGISTRY_CHANGES_TOTAL`]
//! (`corral_registry_changes_total{change="joined|left|expired"}`).
//!
//! # When not to use it
//!
//! It is a directory of live agents, not a service mesh: it does not
//! probe endpoints, balance load between them or route requests to
//! them. An agent that is alive but unreachable stays listed until it
//! stops heartbeating.

#![warn(missing_docs)]

mod config;
mod entry;
mod error;
mod memory;
pub mod metrics;
mod redis;
mod registry;

pub use config::{
    RegistryConfig, DEFAULT_MAX_AGENTS, DEFAULT_MAX_TTL, DEFAULT_SWEEP_INTERVAL, DEFAULT_TTL,
};
pub use entry::{
    Entry, MAX_AGENT_LEN, MAX_CAPABILITIES, MAX_CAPABILITY_LEN, MAX_ENDPOINT_LEN,
    MAX_METADATA_BYTES, MAX_MODELS, MAX_MODEL_LEN,
};
pub use error::RegistryError;
pub use registry::{Put, Registry, MAX_CAPABILITY_LABELS, OTHER_CAPABILITIES};
