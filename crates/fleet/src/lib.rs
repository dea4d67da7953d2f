//! `corral-fleet`: several Ollama servers behind one queue.
//!
//! The scheduler (`corral-priority`) keeps one queue of waiting requests
//! per model, in its order of service; the fleet says, for the request
//! at the head, which upstream runs it now, or that it waits. Permits are
//! per (upstream, model), as Ollama's parallelism is per loaded model,
//! and the fleet knows what is loaded where: from its own dispatches, and
//! from each upstream's `/api/ps` (with when Ollama will unload it) as the
//! proxy polls it.
//!
//! # Where a request goes
//!
//! 1. An upstream with its model loaded and a free permit: the one its
//!    conversation (`X-Session-Id`) last ran on, so Ollama's prompt
//!    cache is reused, if it has one free (a busy one is not waited for);
//!    else the least busy for its weight.
//! 2. If the model is loaded somewhere and a permit there comes back
//!    sooner than a load would take (from the average hold the scheduler
//!    measures, times the rounds of requests waiting), it waits for one.
//! 3. Else the upstream where loading it costs least: one with room for
//!    another model (`max_loaded`), else one where an idle model nobody
//!    waits for can be evicted.
//! 4. Else, if it is more urgent than everything waiting for the models
//!    loaded on some upstream (a better effective priority, or the same
//!    and waiting longer by more than a model load costs), that upstream
//!    is **drained** for it: it takes no more work for its models, and
//!    once they finish the waiting model is loaded there. A busy model is
//!    never evicted.
//!
//! Work is so grouped by model: a model stays loaded while its queue
//! lasts, and another takes its place only when it has waited, in the
//! order of service, more than the load costs. Aging in the scheduler
//! bounds how long any priority waits for its turn.
//!
//! Capacities change at run time ([`Fleet::set_capacity`]): the admin's,
//! or found by measuring (the proxy's `capacity = "auto"`).
//!
//! # Failing upstreams
//!
//! A request whose upstream fails before answering (refused, reset, closed
//! before the headers) is moved: the upstream is drained until the
//! proxy's probe finds it answering again, and the request gets the first
//! permit free on another upstream that may serve its model, ahead of
//! everything waiting ([`Route::failover`]). What waited in the queue
//! simply goes elsewhere.
//!
//! # Replicas
//!
//! With the `redis` feature, [`Fleet::share`] shares the fleet with every
//! replica on the same Redis: each replica places with its own view, then
//! [`Route::claimed`] claims the permit in Redis (one script per upstream
//! checks capacity, residency and drains across replicas; refused, the
//! request waits again ahead of the replica's queue). Released permits
//! and failing upstreams are announced; what each replica's queue waits
//! for is shared for drain decisions. While Redis is away each replica
//! places alone with its share of each capacity. Redis (`redis` crate,
//! through `corral-core`'s `RedisState`) rather than a consensus crate:
//! the replicas already share it for the rest of their state.
//!
//! # Locks
//!
//! One mutex, held for a decision and never across an `.await`; a pool
//! calls in holding its own lock, and the fleet tells pools that permits
//! came back ([`Waiting::kick`]) only after letting go of its own.
//!
//! # Example
//!
//! ```
//! use corral_fleet::{Fleet, UpstreamSpec, Urgency, Want};
//!
//! // Two servers that each hold one model loaded.
//! let fleet = Fleet::new(vec![
//!     UpstreamSpec::new("a", 2).with_max_loaded(Some(1)),
//!     UpstreamSpec::new("b", 2).with_max_loaded(Some(1)),
//! ]);
//! let want = Want {
//!     urgency: Urgency { level: 4, since: tokio::time::Instant::now() },
//!     waiting: 1,
//!     session: None,
//!     hold: None,
//! };
//! let first = fleet.place("llama3:latest", &want).unwrap();
//! let second = fleet.place("qwen2.5:latest", &want).unwrap();
//! assert_ne!(first.upstream(), second.upstream(), "each model on its own server");
//! let again = fleet.place("llama3:latest", &want).unwrap();
//! assert_eq!(again.upstream(), first.upstream(), "where it is loaded");
//! // Neither server can take a third model while both are busy.
//! assert!(fleet.place("mistral:latest", &want).is_none());
//! # for slot in [first, second, again] { fleet.free(slot); }
//! ```

mod fleet;
mod health;
pub mod metrics;
mod place;
mod placing;
mod route;
#[cfg(feature = "redis")]
mod shared;
#[cfg(not(feature = "redis"))]
#[path = "shared/off.rs"]
mod shared;
mod slot;
mod spec;
mod status;

pub use fleet::{Fleet, ModelStatus, Slot, UpstreamStatus, Waiting, DEFAULT_LOAD_COST};
pub use health::FAILURES_BEFORE_DRAINING;
pub use place::{Urgency, Want};
pub use placing::MAX_SESSIONS;
pub use route::Route;
pub use spec::{UpstreamSpec, ANY_MODEL};
