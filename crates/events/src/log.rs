//! The log: a bounded ring in memory, optionally a JSON-lines file.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use corral_core::{Event, EventSink, NewEvent};
use serde::Deserialize;

use crate::projection::{apply, AgentUsage};

/// Events kept in memory unless told otherwise (the design's last
/// 100,000).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Where events are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept in memory; the oldest go first.
    pub capacity: usize,
    /// An append-only JSON-lines file every event is also written to, and
    /// read back from at start.
    pub file: Option<PathBuf>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            file: None,
        }
    }
}

/// Which events to replay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Query {
    /// Only those at or after this time (seconds since the Unix epoch).
    pub since: Option<f64>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At most this many, the oldest first.
    pub limit: Option<usize>,
}

struct State {
    events: VecDeque<Event>,
    next_id: u64,
    usage: BTreeMap<String, AgentUsage>,
}

/// The event log.
pub struct EventLog {
    capacity: usize,
    state: Mutex<State>,
    file: Option<Mutex<File>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventLog {
    /// A log for `config`; with a file, the events already in it are read
    /// back (their usage included) and new ones appended.
    pub fn open(config: &EventsConfig) -> std::io::Result<Self> {
        let mut state = State {
            events: VecDeque::with_capacity(config.capacity.min(4096)),
            next_id: 1,
            usage: BTreeMap::new(),
        };
        let file = match &config.file {
            None => None,
            Some(path) => {
                if let Ok(existing) = File::open(path) {
                    for line in BufReader::new(existing).lines() {
                        let line = line?;
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) => {
                                state.next_id = state.next_id.max(event.id + 1);
                                apply(&mut state.usage, &event);
                                push(&mut state.events, event, config.capacity);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping an unreadable line of the event file")
                            }
                        }
                    }
                }
                Some(Mutex::new(
                    OpenOptions::new().create(true).append(true).open(path)?,
                ))
            }
        };
        Ok(Self {
            capacity: config.capacity,
            state: Mutex::new(state),
            file,
        })
    }

    /// Events that match `query`, oldest first.
    pub fn replay(&self, query: &Query) -> Vec<Event> {
        let state = lock(&self.state);
        let matching = state.events.iter().filter(|e| {
            query.since.is_none_or(|since| e.timestamp >= since)
                && query
                    .agent
                    .as_deref()
                    .is_none_or(|a| e.agent.as_deref() == Some(a))
                && query.kind.as_deref().is_none_or(|k| e.kind == k)
        });
        match query.limit {
            Some(limit) => matching.take(limit).cloned().collect(),
            None => matching.cloned().collect(),
        }
    }

    /// Per-agent usage over every event recorded (and read back).
    pub fn usage(&self) -> BTreeMap<String, AgentUsage> {
        lock(&self.state).usage.clone()
    }

    /// Events held in memory, and the id the next one will get.
    pub fn size(&self) -> (usize, u64) {
        let state = lock(&self.state);
        (state.events.len(), state.next_id)
    }
}

fn push(events: &mut VecDeque<Event>, event: Event, capacity: usize) {
    if capacity == 0 {
        return;
    }
    if events.len() >= capacity {
        events.pop_front();
    }
    events.push_back(event);
}

impl EventSink for EventLog {
    fn record(&self, new: NewEvent) {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let event = {
            let mut state = lock(&self.state);
            let event = Event {
                id: state.next_id,
                timestamp,
                kind: new.kind.to_string(),
                agent: new.agent,
                request_id: new.request_id,
                data: new.data,
            };
            state.next_id += 1;
            apply(&mut state.usage, &event);
            push(&mut state.events, event.clone(), self.capacity);
            event
        };
        if let Some(file) = &self.file {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = lock(file).write_all(&line) {
                tracing::warn!(error = %e, "cannot append to the event file");
            }
        }
    }
}
