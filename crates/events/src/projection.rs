//! Per-agent usage, rebuilt from events.

use std::collections::BTreeMap;

use corral_core::{Event, EventValue};
use serde::Serialize;

use crate::packed::scalar;

/// What one agent has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentUsage {
    /// Its class, as of its last request (left out where the usage is a
    /// class's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Requests received.
    pub requests: u64,
    /// Requests answered to the end.
    pub completed: u64,
    /// Requests refused by Corral (shed, rate limited, ...).
    pub refused: u64,
    /// Requests the upstream failed: an error status, a timeout, a
    /// stream it broke.
    pub failed: u64,
    /// Requests whose client left first.
    pub cancelled: u64,
    /// Prompt tokens, as the answers reported them.
    pub prompt_tokens: u64,
    /// Generated tokens, as the answers reported them.
    pub generated_tokens: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
}

/// How long hourly usage is kept ([`EventStore::usage_since`](crate::EventStore::usage_since)):
/// a month and a few days, enough for a monthly budget's window.
pub const USAGE_RETENTION_HOURS: u64 = 35 * 24;

/// The kinds of event that count in usage.
pub(crate) const COUNTED_KINDS: [&str; 4] = ["received", "refused", "cache_hit", "completed"];

impl AgentUsage {
    /// Its counters by name.
    pub fn counters(&self) -> [(&'static str, u64); 8] {
        [
            ("requests", self.requests),
            ("completed", self.completed),
            ("refused", self.refused),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
            ("prompt_tokens", self.prompt_tokens),
            ("generated_tokens", self.generated_tokens),
            ("cache_hits", self.cache_hits),
        ]
    }

    /// Adds `n` to the counter `name` (an unknown name adds nothing).
    pub fn add(&mut self, name: &str, n: u64) {
        let counter = match name {
            "requests" => &mut self.requests,
            "completed" => &mut self.completed,
            "refused" => &mut self.refused,
            "failed" => &mut self.failed,
            "cancelled" => &mut self.cancelled,
            "prompt_tokens" => &mut self.prompt_tokens,
            "generated_tokens" => &mut self.generated_tokens,
            "cache_hits" => &mut self.cache_hits,
            _ => return,
        };
        *counter = counter.saturating_add(n);
    }

    /// Adds another's counters to these; its class where this has none.
    ///
    /// ```
    /// use corral_events::AgentUsage;
    ///
    /// let mut total = AgentUsage { requests: 2, ..AgentUsage::default() };
    /// total.merge(&AgentUsage { requests: 3, generated_tokens: 40, class: Some("batch".into()), ..AgentUsage::default() });
    /// assert_eq!((total.requests, total.generated_tokens), (5, 40));
    /// assert_eq!(total.class.as_deref(), Some("batch"));
    /// ```
    pub fn merge(&mut self, other: &AgentUsage) {
        for (name, n) in other.counters() {
            self.add(name, n);
        }
        if self.class.is_none() {
            self.class.clone_from(&other.class);
        }
    }
}

/// The hour (since the Unix epoch) a timestamp falls in.
pub(crate) fn hour_of(timestamp: f64) -> u64 {
    (timestamp.max(0.0) / 3600.0) as u64
}

/// Folds one event into `usage`.
pub fn apply(usage: &mut BTreeMap<String, AgentUsage>, event: &Event) {
    let Some(agent) = &event.agent else {
        return;
    };
    // Most events are about an agent already known: no key to allocate.
    if let Some(entry) = usage.get_mut(agent.as_str()) {
        fold_json(entry, &event.kind, &event.data);
        return;
    }
    fold_json(
        usage.entry(agent.clone()).or_default(),
        &event.kind,
        &event.data,
    );
}

/// Folds an event of `kind` carrying `data` into one agent's usage.
pub(crate) fn fold_json(entry: &mut AgentUsage, kind: &str, data: &serde_json::Value) {
    fold(entry, kind, |name| data.get(name).map(scalar));
}

/// Folds an event of `kind` into one agent's usage; `field` reads its
/// data by name.
pub(crate) fn fold<'a>(
    entry: &mut AgentUsage,
    kind: &str,
    field: impl Fn(&str) -> Option<EventValue<'a>>,
) {
    let (counted, class) = counted(kind, field);
    entry.count(&counted, class);
}

/// What an event of `kind` adds to its agent's usage (its counters;
/// `class` left out), and the class it names; `field` reads its data by
/// name.
pub(crate) fn counted<'a>(
    kind: &str,
    field: impl Fn(&str) -> Option<EventValue<'a>>,
) -> (AgentUsage, Option<&'a str>) {
    // As `Value::as_u64` reads them: whole numbers from 0 up.
    let number = |name: &str| match field(name) {
        Some(EventValue::U64(n)) => n,
        Some(EventValue::I64(n)) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    };
    let text = |name: &str| match field(name) {
        Some(EventValue::Str(s)) => Some(s),
        _ => None,
    };
    let mut counted = AgentUsage::default();
    let mut class = None;
    match kind {
        "received" => {
            counted.requests = 1;
            class = text("class");
        }
        "refused" => match text("reason") {
            Some(reason) if reason.starts_with("upstream_") || reason == "unexpected" => {
                counted.failed = 1
            }
            _ => counted.refused = 1,
        },
        "cache_hit" => counted.cache_hits = 1,
        "completed" => {
            match text("outcome") {
                Some("completed") => counted.completed = 1,
                Some("cancelled") => counted.cancelled = 1,
                Some("error") => counted.failed = 1,
                _ => {}
            }
            counted.prompt_tokens = number("prompt_tokens");
            counted.generated_tokens = number("generated_tokens");
        }
        _ => {}
    }
    (counted, class)
}

impl AgentUsage {
    /// Adds what one event counted (see [`counted`]); its class, when it
    /// names one, becomes the agent's.
    pub(crate) fn count(&mut self, counted: &AgentUsage, class: Option<&str>) {
        for (name, n) in counted.counters() {
            if n > 0 {
                self.add(name, n);
            }
        }
        if let Some(class) = class {
            if self.class.as_deref() != Some(class) {
                self.class = Some(class.to_string());
            }
        }
    }
}

/// Per-agent usage from a run of events.
pub fn project<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeMap<String, AgentUsage> {
    let mut usage = BTreeMap::new();
    for event in events {
        apply(&mut usage, event);
    }
    usage
}
