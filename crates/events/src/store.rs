//! What readers (the admin API) ask of an event log, whatever keeps it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use corral_core::{Event, EventSink};

use crate::log::{EventLog, Query};
use crate::projection::AgentUsage;

/// An answer of an [`EventStore`]: ready at once for the log in memory,
/// a round trip for a store shared by replicas.
pub type Read<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event log that can be read back: this process's [`EventLog`], or a
/// store shared by replicas (a Redis stream) behind the same calls.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use corral_core::{EventSink, NewEvent};
/// use corral_events::{EventLog, EventStore, EventsConfig, Query};
///
/// let store: Arc<dyn EventStore> = Arc::new(EventLog::open(&EventsConfig::default()).unwrap());
/// store.record(NewEvent::new("received", serde_json::json!({})).about("planner", "r1"));
/// assert_eq!(store.replay(Query::default()).await.len(), 1);
/// assert_eq!(store.usage().await["planner"].requests, 1);
/// assert_eq!(store.usage_since(0.0, Some("planner".into())).await["planner"].requests, 1);
/// assert_eq!(store.size().await, (1, 2));
/// # });
/// ```
pub trait EventStore: EventSink {
    /// Events that match `query`, oldest first.
    fn replay(&self, query: Query) -> Read<'_, Vec<Event>>;
    /// Per-agent usage over every event recorded.
    fn usage(&self) -> Read<'_, BTreeMap<String, AgentUsage>>;
    /// Per-agent usage since `since` (seconds since the Unix epoch, from
    /// the start of its hour; the last
    /// [`USAGE_RETENTION_HOURS`](crate::USAGE_RETENTION_HOURS) at most),
    /// only `agent`'s when given.
    fn usage_since(
        &self,
        since: f64,
        agent: Option<String>,
    ) -> Read<'_, BTreeMap<String, AgentUsage>>;
    /// Events held, and the id the next one will get.
    fn size(&self) -> Read<'_, (usize, u64)>;
}

impl EventStore for EventLog {
    fn replay(&self, query: Query) -> Read<'_, Vec<Event>> {
        Box::pin(std::future::ready(EventLog::replay(self, &query)))
    }

    fn usage(&self) -> Read<'_, BTreeMap<String, AgentUsage>> {
        Box::pin(std::future::ready(EventLog::usage(self)))
    }

    fn usage_since(
        &self,
        since: f64,
        agent: Option<String>,
    ) -> Read<'_, BTreeMap<String, AgentUsage>> {
        Box::pin(std::future::ready(EventLog::usage_since(
            self,
            since,
            agent.as_deref(),
        )))
    }

    fn size(&self) -> Read<'_, (usize, u64)> {
        Box::pin(std::future::ready(EventLog::size(self)))
    }
}
