//! `corral-events`: every interaction as an event.
//!
//! An append-only log of typed [`Event`](corral_core::Event)s (received, dispatched, first
//! byte, completed with tokens and durations, refused with the reason,
//! cache hits, retries, breaker and degradation transitions), each with an
//! id, a timestamp, the agent and the request id. In memory it keeps the
//! last `capacity` (the design's 100,000); with a `file` every event is
//! also appended as one JSON line, and the log is read back from it at
//! start, so a restart keeps its history.
//!
//! Recording stays off the shared log: the recording thread numbers its
//! event and holds it in a shard of its own, and a thread of the log's
//! merges the shards in batches (std threads and `crossbeam-utils`'
//! `CachePadded` for the shards, nothing else); a read merges first, so
//! it sees every event recorded before it, in order.
//!
//! [`EventLog::replay`] returns events since a time, for an agent or of a
//! kind. [`project`] rebuilds per-agent usage (requests, completions,
//! refusals, tokens, cache hits) from any run of events; the log keeps the
//! same projection live as it records, over all events ever recorded,
//! not only those still held; and usage by hour and agent for the last
//! [`USAGE_RETENTION_HOURS`] (35 days), read by [`EventStore::usage_since`]
//! (the admin API's `/corral/usage`).
//!
//! Readers go through [`EventStore`] (replay, usage, size, each a future):
//! the admin API holds a `dyn EventStore`, so a store shared by replicas
//! stands where the in-memory log stands: with the `redis` feature,
//! `RedisEvents` appends to a Redis stream (`XADD MAXLEN ~ 100000`) that
//! any replica replays, buffering (bounded) while Redis is away, and adds
//! each event's usage to its hour's hash (`usage:<hour>`, kept 35 days),
//! so usage over a span is the fleet's whatever the stream still holds.
//!
//! ```
//! use corral_core::{EventSink, NewEvent};
//! use corral_events::{project, EventLog, EventsConfig, Query};
//! use serde_json::json;
//!
//! let log = EventLog::open(&EventsConfig::default()).unwrap();
//! log.record(NewEvent::new("received", json!({"endpoint": "chat"})).about("planner", "r1"));
//! log.record(NewEvent::new("completed", json!({"outcome": "completed", "prompt_tokens": 12, "generated_tokens": 40})).about("planner", "r1"));
//!
//! let events = log.replay(&Query { agent: Some("planner".into()), ..Query::default() });
//! assert_eq!(events.len(), 2);
//! assert_eq!(project(&events)["planner"].generated_tokens, 40);
//! assert_eq!(log.usage()["planner"], project(&events)["planner"]);
//! ```

#[cfg(feature = "redis")]
mod hourly;
mod log;
mod packed;
mod projection;
#[cfg(feature = "redis")]
mod redis;
mod store;

pub use log::{EventLog, EventsConfig, Query, DEFAULT_CAPACITY};
pub use projection::{apply, project, AgentUsage, USAGE_RETENTION_HOURS};
#[cfg(feature = "redis")]
pub use redis::{RedisEvents, BUFFERED_EVENTS, EVENTS_DROPPED_TOTAL, STREAM_MAXLEN};
pub use store::{EventStore, Read};
