//! Events: what happened to a request, or to the system, as one typed,
//! append-only record each. Layers and the proxy record them through an
//! [`EventSink`]; the event log keeps and replays them.

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the log, from 1; ids only grow.
    pub id: u64,
    /// When, in seconds since the Unix epoch.
    pub timestamp: f64,
    /// What: `received`, `dispatched`, `first_byte`, `completed`,
    /// `refused`, `cache_hit`, `retry`, `breaker`, `degradation`,
    /// `backpressure`.
    pub kind: String,
    /// Who asked, for request events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Which request, for request events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The rest.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// An event before the log numbers and stamps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What.
    pub kind: &'static str,
    /// Who asked.
    pub agent: Option<String>,
    /// Which request.
    pub request_id: Option<String>,
    /// The rest.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` carrying `data`.
    pub fn new(kind: &'static str, data: serde_json::Value) -> Self {
        Self {
            kind,
            agent: None,
            request_id: None,
            data,
        }
    }

    /// The same, about `request_id` from `agent`.
    pub fn about(mut self, agent: &str, request_id: &str) -> Self {
        self.agent = Some(agent.to_string());
        self.request_id = Some(request_id.to_string());
        self
    }
}

/// Where events go. Recording never blocks nor fails the request path.
pub trait EventSink: Send + Sync + 'static {
    /// Records `event`.
    fn record(&self, event: NewEvent);
}
