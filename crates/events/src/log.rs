//! The log: a bounded ring in memory, optionally a JSON-lines file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};

use corral_core::{lock, Event, EventSink, EventValue, NewEvent};
use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

mod held;
mod hourly;

use crate::packed::scalar;
use crate::packed::Packed;
use crate::projection::{counted, hour_of, AgentUsage, COUNTED_KINDS};
use held::Shard;

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
    capacity: usize,
    events: VecDeque<Stored>,
    /// Per-agent usage; its keys are the names the stored events share.
    usage: BTreeMap<Arc<str>, AgentUsage>,
    /// The kinds seen, shared by the stored events.
    kinds: BTreeSet<Arc<str>>,
    /// Usage by hour and agent, for the last [`USAGE_RETENTION_HOURS`](crate::USAGE_RETENTION_HOURS).
    hourly: BTreeMap<(Arc<str>, u64), AgentUsage>,
    /// The newest hour counted: older ones past the retention go when it
    /// changes.
    hour: u64,
    /// The oldest hour that may still be counted: nothing to drop before
    /// it is past the retention.
    first_hour: u64,
    /// The shards' buffers as last taken, emptied: swapped with the
    /// shards' at the next merge, so neither side allocates again.
    taken: Vec<Shard>,
}

/// An event in memory: its agent and kind shared with the others, its
/// request id and data packed (see [`Packed`]), ~200 bytes in all where
/// an [`Event`] holding a `serde_json::Value` takes ~1 KiB.
struct Stored {
    id: u64,
    timestamp: f64,
    kind: Arc<str>,
    agent: Option<Arc<str>>,
    packed: Packed,
}

impl Stored {
    fn to_event(&self) -> Event {
        Event {
            id: self.id,
            timestamp: self.timestamp,
            kind: self.kind.to_string(),
            agent: self.agent.as_deref().map(str::to_string),
            request_id: self.packed.request_id().map(str::to_string),
            data: self.packed.data(),
        }
    }
}

impl State {
    /// Adds an event to its agent's usage (what it `counted`, and the
    /// class it names) and keeps it; the caller numbered it.
    fn insert(
        &mut self,
        id: u64,
        timestamp: f64,
        kind: &str,
        agent: Option<&str>,
        packed: Packed,
        (counted, class): (&AgentUsage, Option<&str>),
    ) {
        let count = |usage: &mut AgentUsage| usage.count(counted, class);
        let agent = agent.map(|agent| {
            let name = match self.usage.get_key_value(agent) {
                Some((name, _)) => name.clone(),
                None => {
                    let name = Arc::<str>::from(agent);
                    self.usage.insert(name.clone(), AgentUsage::default());
                    name
                }
            };
            if let Some(usage) = self.usage.get_mut(agent) {
                count(usage);
            }
            if COUNTED_KINDS.contains(&kind) {
                self.count_hourly(hour_of(timestamp), &name, count);
            }
            name
        });
        if self.capacity == 0 {
            return;
        }
        let kind = match self.kinds.get(kind) {
            Some(kind) => kind.clone(),
            None => {
                let kind = Arc::<str>::from(kind);
                self.kinds.insert(kind.clone());
                kind
            }
        };
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(Stored {
            id,
            timestamp,
            kind,
            agent,
            packed,
        });
    }
}

/// An event as a line of the file: the same JSON as [`Event`]'s, written
/// from borrowed parts.
#[derive(Serialize)]
struct Line<'a> {
    id: u64,
    timestamp: f64,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    data: &'a serde_json::Value,
}

/// The event log.
///
/// A request records three or four events from whichever worker thread
/// runs it. Each used to be inserted into the shared log under its lock
/// on the request's own path: the ring, the usage maps and the lock moved
/// from core to core with the requests, and every recording thread
/// waited on the others. Now a recording thread only numbers its event
/// (one atomic counter), counts what it adds to its agent's usage from
/// the fields at hand, and holds it in a shard of its own, under a lock
/// no other thread takes but a merge; a thread of the log's, woken once
/// per 256 events a shard holds, merges them into the log off the
/// requests' tasks. Every read merges first, so a read sees every event
/// recorded before it, in the order of their ids, without gaps.
/// (callgrind, no layers: the events' work on the request's path ~4,000
/// → ~3,100 instructions a request; benches/RESULTS.md, "Fourth pass".)
pub struct EventLog {
    capacity: usize,
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    file: Option<Mutex<File>>,
    next_id: AtomicU64,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// The merging thread, started by the first full batch (`None`: it
    /// could not be started).
    merger: OnceLock<Option<Thread>>,
    /// The same thread, joined when the log is dropped.
    joiner: Mutex<Option<JoinHandle<()>>>,
    /// Set when the log is dropped: the merging thread ends.
    closed: AtomicBool,
}

corral_core::impl_debug!(EventLog { capacity });

impl EventLog {
    /// A log for `config`; with a file, the events already in it are read
    /// back (their usage included) and new ones appended.
    pub fn open(config: &EventsConfig) -> std::io::Result<Self> {
        let mut state = State {
            capacity: config.capacity,
            events: VecDeque::with_capacity(config.capacity.min(4096)),
            usage: BTreeMap::new(),
            kinds: BTreeSet::new(),
            hourly: BTreeMap::new(),
            hour: 0,
            first_hour: 0,
            taken: Vec::new(),
        };
        let mut next_id = 1;
        let file = match &config.file {
            None => None,
            Some(path) => {
                if let Ok(existing) = File::open(path) {
                    for line in BufReader::new(existing).lines() {
                        let line = line?;
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) => {
                                next_id = next_id.max(event.id + 1);
                                let packed = Packed::new(event.request_id.as_deref(), &event.data);
                                let (usage, class) =
                                    counted(&event.kind, |name| event.data.get(name).map(scalar));
                                state.insert(
                                    event.id,
                                    event.timestamp,
                                    &event.kind,
                                    event.agent.as_deref(),
                                    packed,
                                    (&usage, class),
                                );
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
        // Two shards a core: the threads that record (the runtime's
        // workers) rarely share one.
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(4, 64);
        Ok(Self {
            capacity: config.capacity,
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                file,
                next_id: AtomicU64::new(next_id),
                shards: (0..shards).map(|_| CachePadded::default()).collect(),
                merger: OnceLock::new(),
                joiner: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Events that match `query`, oldest first.
    pub fn replay(&self, query: &Query) -> Vec<Event> {
        let state = self.inner.merged();
        let matching = state.events.iter().filter(|e| {
            query.since.is_none_or(|since| e.timestamp >= since)
                && query
                    .agent
                    .as_deref()
                    .is_none_or(|a| e.agent.as_deref() == Some(a))
                && query.kind.as_deref().is_none_or(|k| *e.kind == *k)
        });
        let limit = query.limit.unwrap_or(usize::MAX);
        matching.take(limit).map(Stored::to_event).collect()
    }

    /// Per-agent usage over every event recorded (and read back).
    pub fn usage(&self) -> BTreeMap<String, AgentUsage> {
        self.inner
            .merged()
            .usage
            .iter()
            .map(|(agent, usage)| (agent.to_string(), usage.clone()))
            .collect()
    }

    /// Per-agent usage since `since` (seconds since the Unix epoch,
    /// counted from the start of its hour), for the last
    /// [`USAGE_RETENTION_HOURS`](crate::USAGE_RETENTION_HOURS); only `agent`'s when given.
    pub fn usage_since(&self, since: f64, agent: Option<&str>) -> BTreeMap<String, AgentUsage> {
        self.inner.merged().usage_since(hour_of(since), agent)
    }

    /// Events held in memory, and the id the next one will get.
    pub fn size(&self) -> (usize, u64) {
        let state = self.inner.merged();
        (
            state.events.len(),
            self.inner.next_id.load(Ordering::Relaxed),
        )
    }
}

impl Drop for EventLog {
    /// Ends the merging thread and waits for it (a merge at most).
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(Some(merger)) = self.inner.merger.get() {
            merger.unpark();
        }
        if let Some(merger) = lock(&self.inner.joiner).take() {
            let _ = merger.join();
        }
    }
}

impl EventSink for EventLog {
    fn record(&self, new: NewEvent) {
        let packed = Packed::new(new.request_id.as_deref(), &new.data);
        let counted = counted(new.kind, |name| new.data.get(name).map(scalar));
        let (id, timestamp) = self
            .inner
            .hold(new.kind, new.agent.as_deref(), packed, counted);
        if let Some(file) = &self.inner.file {
            let line = Line {
                id,
                timestamp,
                kind: new.kind,
                agent: new.agent.as_deref(),
                request_id: new.request_id.as_deref(),
                data: &new.data,
            };
            let mut line = serde_json::to_vec(&line).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = lock(file).write_all(&line) {
                tracing::warn!(error = %e, "cannot append to the event file");
            }
        }
    }

    fn record_fields(
        &self,
        kind: &'static str,
        agent: &str,
        request_id: &str,
        fields: &[(&'static str, EventValue<'_>)],
    ) {
        if self.inner.file.is_some() {
            // The file's lines are written from the value, as they
            // always were.
            self.record(NewEvent::new(kind, EventValue::object(fields)).about(agent, request_id));
            return;
        }
        let packed = Packed::fields(request_id, fields);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| *value)
        };
        self.inner
            .hold(kind, Some(agent), packed, counted(kind, field));
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests;
