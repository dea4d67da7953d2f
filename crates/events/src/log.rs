//! The log: a bounded ring in memory, optionally a JSON-lines file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{JoinHandle, Thread};

use corral_core::{lock, Event, EventSink, EventValue, NewEvent};
use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::packed::scalar;
use crate::packed::Packed;
use crate::projection::{counted, hour_of, AgentUsage, COUNTED_KINDS, USAGE_RETENTION_HOURS};

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
    /// Usage by hour and agent, for the last [`USAGE_RETENTION_HOURS`].
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

/// An event numbered and stamped by the thread that recorded it, not yet
/// in the log's [`State`].
struct Held {
    id: u64,
    timestamp: f64,
    kind: &'static str,
    agent: Option<Range<usize>>,
    packed: Packed,
    /// What it adds to its agent's usage, counted as it was recorded
    /// (from the fields at hand, not read back from `packed`).
    counted: AgentUsage,
    class: Option<Range<usize>>,
}

/// The events some threads recorded since the last merge. The agents'
/// names are written one after another in one string: no allocation per
/// event once the buffers have grown.
#[derive(Default)]
struct Shard {
    held: Vec<Held>,
    names: String,
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
    /// Takes every event the shards hold and inserts them in the order
    /// of their ids. The shards are all locked at once: an event is
    /// numbered and held under its shard's lock, so no id below the
    /// highest taken can still be on its way, and ids in the log only
    /// grow, without gaps. The caller holds the state's lock, so two
    /// merges never interleave.
    fn merge(&mut self, shards: &[CachePadded<Mutex<Shard>>]) {
        if self.taken.len() < shards.len() {
            self.taken.resize_with(shards.len(), Shard::default);
        }
        {
            let mut locked: Vec<MutexGuard<'_, Shard>> = shards.iter().map(|s| lock(s)).collect();
            if locked.iter().all(|shard| shard.held.is_empty()) {
                return;
            }
            for (shard, taken) in locked.iter_mut().zip(&mut self.taken) {
                std::mem::swap(&mut **shard, taken);
            }
        }
        let mut taken = std::mem::take(&mut self.taken);
        // Each shard's events are in the order of their ids: merged by
        // taking the lowest of the shards' next ones (two or three
        // shards hold events at most times), each event moved once.
        let mut heads: Vec<_> = taken
            .iter_mut()
            .filter(|shard| !shard.held.is_empty())
            .map(|shard| (shard.held.drain(..).peekable(), &shard.names))
            .collect();
        loop {
            let lowest = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(at, (held, _))| Some((held.peek()?.id, at)))
                .min();
            let Some((_, at)) = lowest else { break };
            let (held, names) = &mut heads[at];
            let Some(held) = held.next() else { break };
            let agent = held.agent.map(|range| &names[range]);
            let class = held.class.map(|range| &names[range]);
            let counted = (&held.counted, class);
            self.insert(
                held.id,
                held.timestamp,
                held.kind,
                agent,
                held.packed,
                counted,
            );
        }
        drop(heads);
        for shard in &mut taken {
            shard.names.clear();
        }
        self.taken = taken;
    }

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

impl State {
    /// Folds an event into its agent's usage of `hour` (its class is
    /// the all-time usage's: one string per agent, not per hour); the
    /// hours past the retention go when a new hour starts.
    fn count_hourly(&mut self, hour: u64, agent: &Arc<str>, fold: impl Fn(&mut AgentUsage)) {
        if hour > self.hour {
            self.hour = hour;
            let oldest = hour.saturating_sub(USAGE_RETENTION_HOURS - 1);
            if self.first_hour < oldest {
                self.hourly.retain(|(_, at), _| *at >= oldest);
                self.first_hour = oldest;
            }
        }
        if self.hourly.is_empty() || hour < self.first_hour {
            self.first_hour = hour;
        }
        let entry = self.hourly.entry((agent.clone(), hour)).or_default();
        fold(entry);
        entry.class = None;
    }

    /// Usage since `hour` (included, and within the retention), per
    /// agent or for one.
    fn usage_since(&self, hour: u64, agent: Option<&str>) -> BTreeMap<String, AgentUsage> {
        let hour = hour.max(self.hour.saturating_sub(USAGE_RETENTION_HOURS - 1));
        let mut usage: BTreeMap<String, AgentUsage> = BTreeMap::new();
        let range = match agent {
            Some(agent) => {
                let agent: Arc<str> = Arc::from(agent);
                (
                    std::ops::Bound::Included((agent.clone(), hour)),
                    std::ops::Bound::Included((agent, u64::MAX)),
                )
            }
            None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        };
        let counted = self
            .hourly
            .range::<(Arc<str>, u64), _>(range)
            .filter(|((_, at), _)| *at >= hour);
        for ((name, _), counted) in counted {
            let total = usage.entry(name.to_string()).or_insert_with(|| AgentUsage {
                class: self.usage.get(name).and_then(|u| u.class.clone()),
                ..AgentUsage::default()
            });
            total.merge(counted);
        }
        usage
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

/// Events a shard holds when it wakes the merging thread.
const BATCH: usize = 256;

/// Events a shard holds at most: past it (the merging thread is behind,
/// or could not start) the recording thread merges them itself.
const SHARD_LIMIT: usize = 4096;

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
    /// [`USAGE_RETENTION_HOURS`]; only `agent`'s when given.
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

impl Inner {
    /// The state, with every event held merged into it.
    fn merged(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        state.merge(&self.shards);
        state
    }

    /// Numbers and stamps an event and holds it in the recording
    /// thread's shard, with what it adds to its agent's usage; its id
    /// and time.
    fn hold(
        self: &Arc<Self>,
        kind: &'static str,
        agent: Option<&str>,
        packed: Packed,
        (counted, class): (AgentUsage, Option<&str>),
    ) -> (u64, f64) {
        let timestamp = now();
        let index = shard_index(self.shards.len());
        let mut shard = lock(&self.shards[index]);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut name = |name: &str| {
            let start = shard.names.len();
            shard.names.push_str(name);
            start..shard.names.len()
        };
        let agent = agent.map(&mut name);
        let class = class.map(&mut name);
        shard.held.push(Held {
            id,
            timestamp,
            kind,
            agent,
            packed,
            counted,
            class,
        });
        let held = shard.held.len();
        drop(shard);
        if held == BATCH {
            self.wake_merger();
        } else if held >= SHARD_LIMIT {
            drop(self.merged());
        }
        (id, timestamp)
    }

    /// Wakes the merging thread, started at the first call.
    fn wake_merger(self: &Arc<Self>) {
        let merger = self.merger.get_or_init(|| {
            let log = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("corral-events".into())
                .spawn(move || merge_when_woken(&log))
                .map(|handle| {
                    let thread = handle.thread().clone();
                    *lock(&self.joiner) = Some(handle);
                    thread
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start the event log's merging thread; requests merge their events"))
                .ok()
        });
        if let Some(merger) = merger {
            merger.unpark();
        }
    }
}

/// The merging thread: merges when woken, until the log is dropped.
fn merge_when_woken(log: &Weak<Inner>) {
    loop {
        std::thread::park();
        let Some(log) = log.upgrade() else { return };
        if log.closed.load(Ordering::Acquire) {
            return;
        }
        drop(log.merged());
    }
}

/// The shard of the calling thread: threads are numbered in the order
/// they first record, and share shards round the ring.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.try_with(|index| *index).unwrap_or(0) % shards
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
mod tests {
    use super::*;

    fn received(log: &EventLog, n: usize) {
        for i in 0..n {
            log.record_fields(
                "received",
                "planner",
                &i.to_string(),
                &[("class", "batch".into())],
            );
        }
    }

    #[test]
    fn a_full_batch_is_merged_off_the_recording_thread_and_the_merger_ends_with_the_log() {
        let log = EventLog::open(&EventsConfig::default()).unwrap();
        received(&log, BATCH - 1);
        assert!(
            log.inner.merger.get().is_none(),
            "no thread for fewer events"
        );
        assert_eq!(lock(&log.inner.state).events.len(), 0, "held, not merged");
        received(&log, 1);
        assert!(matches!(log.inner.merger.get(), Some(Some(_))));
        // Merged by the log's thread, not by a read: the state fills up
        // without `merged()` being called.
        // (Waited for by yielding, a bounded number of times: a thread
        // that never merges fails the test instead of hanging it.)
        let merged = (0..10_000_000).any(|_| {
            std::thread::yield_now();
            lock(&log.inner.state).events.len() == BATCH
        });
        assert!(merged, "the batch was never merged");
        // The thread ends when the log is dropped: its handle taken here
        // (so the drop does not join it) and joined on a helper, so a
        // thread that lives on fails the test instead of hanging it.
        let merger = lock(&log.inner.joiner).take().expect("a merging thread");
        drop(log);
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(merger.join().is_ok());
        });
        assert_eq!(
            ended.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true),
            "the merging thread did not end with the log"
        );
    }

    #[test]
    fn a_log_that_keeps_nothing_still_counts_usage_through_the_shards() {
        let log = EventLog::open(&EventsConfig {
            capacity: 0,
            file: None,
        })
        .unwrap();
        received(&log, BATCH + 10);
        log.record(
            NewEvent::new(
                "received",
                serde_json::json!({"class": "interactive", "endpoint": "chat"}),
            )
            .about("planner", "r"),
        );
        log.record(
            NewEvent::new(
                "completed",
                serde_json::json!({"outcome": "completed", "prompt_tokens": 3, "generated_tokens": 9}),
            )
            .about("planner", "r"),
        );
        let usage = &log.usage()["planner"];
        assert_eq!(usage.requests, BATCH as u64 + 11);
        assert_eq!(
            (usage.completed, usage.prompt_tokens, usage.generated_tokens),
            (1, 3, 9)
        );
        assert_eq!(
            usage.class.as_deref(),
            Some("interactive"),
            "the last class named"
        );
        assert_eq!(log.size(), (0, BATCH as u64 + 13));
        assert!(log.replay(&Query::default()).is_empty());
    }

    #[test]
    fn a_shard_past_its_limit_is_merged_by_the_recording_thread() {
        let log = EventLog::open(&EventsConfig::default()).unwrap();
        // As if the merging thread could not be started.
        log.inner.merger.set(None).unwrap();
        received(&log, SHARD_LIMIT - 1);
        assert_eq!(lock(&log.inner.state).events.len(), 0);
        received(&log, 1);
        assert_eq!(lock(&log.inner.state).events.len(), SHARD_LIMIT);
        assert_eq!(log.usage()["planner"].requests, SHARD_LIMIT as u64);
    }
}
