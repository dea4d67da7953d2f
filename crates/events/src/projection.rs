//! Per-agent usage, rebuilt from events.

use std::collections::BTreeMap;

use corral_core::Event;
use serde::Serialize;

/// What one agent has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentUsage {
    /// Its class, as of its last request.
    pub class: Option<String>,
    /// Requests received.
    pub requests: u64,
    /// Requests answered to the end.
    pub completed: u64,
    /// Requests refused by Corral.
    pub refused: u64,
    /// Requests whose client left first.
    pub cancelled: u64,
    /// Prompt tokens, as the answers reported them.
    pub prompt_tokens: u64,
    /// Generated tokens, as the answers reported them.
    pub generated_tokens: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
}

/// Folds one event into `usage`.
pub fn apply(usage: &mut BTreeMap<String, AgentUsage>, event: &Event) {
    let Some(agent) = &event.agent else {
        return;
    };
    let entry = usage.entry(agent.clone()).or_default();
    let number = |key: &str| {
        event
            .data
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    match event.kind.as_str() {
        "received" => {
            entry.requests += 1;
            if let Some(class) = event.data.get("class").and_then(serde_json::Value::as_str) {
                entry.class = Some(class.to_string());
            }
        }
        "refused" => entry.refused += 1,
        "cache_hit" => entry.cache_hits += 1,
        "completed" => {
            match event
                .data
                .get("outcome")
                .and_then(serde_json::Value::as_str)
            {
                Some("completed") => entry.completed += 1,
                Some("cancelled") => entry.cancelled += 1,
                _ => {}
            }
            entry.prompt_tokens += number("prompt_tokens");
            entry.generated_tokens += number("generated_tokens");
        }
        _ => {}
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
