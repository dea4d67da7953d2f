//! The event log as a Redis stream, shared by every replica.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use corral_core::{Event, EventSink, NewEvent, RedisState};
use tokio::sync::mpsc;

use crate::hourly::{self, Tally};
use crate::log::{EventLog, Query};
use crate::projection::{apply, fold_json, hour_of, AgentUsage, COUNTED_KINDS};
use crate::store::{EventStore, Read};

/// Roughly how many events the stream keeps (`XADD MAXLEN ~`).
pub const STREAM_MAXLEN: usize = 100_000;
/// Events waiting for Redis, at most; past it the oldest are dropped and
/// counted in `corral_events_dropped_total`.
pub const BUFFERED_EVENTS: usize = 10_000;
/// The counter of events that never reached the stream.
pub const EVENTS_DROPPED_TOTAL: &str = "corral_events_dropped_total";
/// How many events one `XADD` pipeline carries.
const BATCH: usize = 256;
/// How many entries one `XRANGE` reads.
const PAGE: usize = 1000;

/// Events in a Redis stream (`<prefix>events`), written by every replica
/// and replayed by time from any of them.
///
/// Recording never waits for Redis: the event goes to this replica's
/// in-memory [`EventLog`] (the answer while Redis is away) and to a
/// writer task that appends it with `XADD ... MAXLEN ~ 100000`, in
/// batches. While Redis does not answer, up to [`BUFFERED_EVENTS`] wait
/// and are written, in order, when it returns; past that the oldest are
/// dropped and counted in `corral_events_dropped_total`, never silently.
///
/// An event's id in the stream is its entry id `ms-seq` as one number,
/// `ms * 1000 + seq`: ids grow, across replicas, as the stream does.
/// Usage is projected from the events the stream holds.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use corral_core::{EventSink, NewEvent, RedisState};
/// use corral_events::{EventLog, EventStore, EventsConfig, Query, RedisEvents};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
/// let local = Arc::new(EventLog::open(&EventsConfig::default()).unwrap());
/// let events = RedisEvents::start(state, local);
/// events.record(NewEvent::new("received", serde_json::json!({})).about("planner", "r1"));
/// let replayed = events.replay(Query { agent: Some("planner".into()), ..Query::default() }).await;
/// # drop(replayed);
/// # }
/// ```
pub struct RedisEvents {
    state: RedisState,
    local: Arc<EventLog>,
    outbox: mpsc::Sender<Outgoing>,
}

/// An event on its way to the stream, and what it adds to its agent's
/// usage of the hour.
struct Outgoing {
    json: String,
    tally: Option<Tally>,
}

corral_core::impl_debug!(RedisEvents { state });

/// What one stream entry holds, besides its id.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    timestamp: f64,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
    replica: Arc<str>,
}

impl RedisEvents {
    /// A stream under `state`'s prefix, `local` answering while Redis is
    /// away; spawns the writer on the current runtime.
    pub fn start(state: RedisState, local: Arc<EventLog>) -> Arc<Self> {
        let (outbox, pending) = mpsc::channel(BUFFERED_EVENTS);
        metrics::describe_counter!(
            EVENTS_DROPPED_TOTAL,
            "events that could not be written to the shared stream"
        );
        tokio::spawn(write(state.clone(), pending));
        Arc::new(Self {
            state,
            local,
            outbox,
        })
    }

    fn key(&self) -> String {
        self.state.key("events")
    }

    fn send(&self, new: &NewEvent) {
        let entry = Entry {
            timestamp: corral_core::unix_now_f64(),
            kind: new.kind.to_string(),
            agent: new.agent.clone(),
            request_id: new.request_id.clone(),
            data: new.data.clone(),
            replica: self.state.replica().clone(),
        };
        let Ok(json) = serde_json::to_string(&entry) else {
            return;
        };
        let tally = new
            .agent
            .as_ref()
            .filter(|_| COUNTED_KINDS.contains(&new.kind))
            .map(|agent| {
                let mut usage = AgentUsage::default();
                fold_json(&mut usage, new.kind, &new.data);
                Tally {
                    hour: hour_of(entry.timestamp),
                    agent: agent.clone(),
                    usage,
                }
            });
        if self.outbox.try_send(Outgoing { json, tally }).is_err() {
            metrics::counter!(EVENTS_DROPPED_TOTAL).increment(1);
        }
    }

    /// Reads the stream from `start` (an entry id, `-` for the first) in
    /// pages, handing each event to `keep` until it says stop.
    async fn scan(
        &self,
        start: String,
        mut keep: impl FnMut(Event) -> bool,
    ) -> Result<(), corral_core::StateUnavailable> {
        let mut start = start;
        loop {
            let mut command = redis::cmd("XRANGE");
            command
                .arg(self.key())
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE);
            let page: Vec<(String, Vec<(String, String)>)> = self.state.query(&command).await?;
            let full = page.len() == PAGE;
            let mut last = None;
            for (id, fields) in page {
                if let Some(event) = decode(&id, &fields) {
                    if !keep(event) {
                        return Ok(());
                    }
                }
                last = Some(id);
            }
            match (full, last) {
                (true, Some(id)) => start = format!("({id}"),
                _ => return Ok(()),
            }
        }
    }
}

fn numeric_id(id: &str) -> u64 {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    let seq: u64 = seq.parse().unwrap_or(0);
    ms.saturating_mul(1000).saturating_add(seq.min(999))
}

fn decode(id: &str, fields: &[(String, String)]) -> Option<Event> {
    let (_, json) = fields.iter().find(|(name, _)| name == "e")?;
    let entry: Entry = serde_json::from_str(json).ok()?;
    Some(Event {
        id: numeric_id(id),
        timestamp: entry.timestamp,
        kind: entry.kind,
        agent: entry.agent,
        request_id: entry.request_id,
        data: entry.data,
    })
}

fn matches(query: &Query, event: &Event) -> bool {
    query
        .agent
        .as_deref()
        .is_none_or(|a| event.agent.as_deref() == Some(a))
        && query.kind.as_deref().is_none_or(|k| event.kind == k)
        && query.since.is_none_or(|since| event.timestamp >= since)
}

impl EventSink for RedisEvents {
    fn record(&self, event: NewEvent) {
        self.send(&event);
        self.local.record(event);
    }
}

impl EventStore for RedisEvents {
    fn replay(&self, query: Query) -> Read<'_, Vec<Event>> {
        Box::pin(async move {
            if query.limit == Some(0) {
                return Vec::new();
            }
            // Stream ids start with the time in ms: start the scan there.
            let start = query.since.map_or("-".to_string(), |s| {
                format!("{}", (s.max(0.0) * 1000.0) as u64)
            });
            let limit = query.limit.unwrap_or(usize::MAX);
            let mut found = Vec::new();
            let scanned = self
                .scan(start, |event| {
                    if matches(&query, &event) {
                        found.push(event);
                    }
                    found.len() < limit
                })
                .await;
            match scanned {
                Ok(()) => found,
                Err(_) => self.local.replay(&query),
            }
        })
    }

    fn usage(&self) -> Read<'_, BTreeMap<String, AgentUsage>> {
        Box::pin(async move {
            let mut usage = BTreeMap::new();
            match self
                .scan("-".into(), |event| {
                    apply(&mut usage, &event);
                    true
                })
                .await
            {
                Ok(()) => usage,
                Err(_) => self.local.usage(),
            }
        })
    }

    fn usage_since(
        &self,
        since: f64,
        agent: Option<String>,
    ) -> Read<'_, BTreeMap<String, AgentUsage>> {
        Box::pin(async move {
            match hourly::usage_since(&self.state, hour_of(since), agent.as_deref()).await {
                Ok(usage) => usage,
                Err(_) => self.local.usage_since(since, agent.as_deref()),
            }
        })
    }

    fn size(&self) -> Read<'_, (usize, u64)> {
        Box::pin(async move {
            let mut length = redis::cmd("XLEN");
            length.arg(self.key());
            let mut last = redis::cmd("XREVRANGE");
            last.arg(self.key()).arg("+").arg("-").arg("COUNT").arg(1);
            let held = self.state.query::<usize>(&length).await;
            let newest = self
                .state
                .query::<Vec<(String, Vec<(String, String)>)>>(&last)
                .await;
            match (held, newest) {
                (Ok(held), Ok(newest)) => {
                    let next = newest.first().map_or(1, |(id, _)| numeric_id(id) + 1);
                    (held, next)
                }
                _ => self.local.size(),
            }
        })
    }
}

/// One batch's commands: each event appended to the stream, its counts
/// added to its hour's usage, each hour's hash kept for the retention.
fn batch_of<'a>(
    state: &RedisState,
    key: &str,
    batch: impl Iterator<Item = &'a Outgoing>,
) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    let mut hours = BTreeSet::new();
    for outgoing in batch {
        pipeline
            .cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg("e")
            .arg(&outgoing.json)
            .ignore();
        if let Some(tally) = &outgoing.tally {
            hourly::add_tally(state, &mut pipeline, tally);
            hours.insert(tally.hour);
        }
    }
    hourly::expire_hours(state, &mut pipeline, &hours);
    pipeline
}

/// Appends the outbox to the stream in batches; holds what Redis did
/// not take (the oldest dropped past [`BUFFERED_EVENTS`]) and retries.
async fn write(state: RedisState, mut pending: mpsc::Receiver<Outgoing>) {
    let key = state.key("events");
    let mut waiting: VecDeque<Outgoing> = VecDeque::new();
    let mut health = state.health();
    loop {
        if waiting.is_empty() {
            match pending.recv().await {
                Some(outgoing) => waiting.push_back(outgoing),
                None => return,
            }
        }
        while waiting.len() < BATCH {
            match pending.try_recv() {
                Ok(outgoing) => waiting.push_back(outgoing),
                Err(_) => break,
            }
        }
        let batch = waiting.len().min(BATCH);
        let pipeline = batch_of(&state, &key, waiting.iter().take(batch));
        match state.pipeline::<()>(&pipeline).await {
            Ok(()) => {
                waiting.drain(..batch);
                continue;
            }
            Err(error) if error.refused => {
                // Redis refused the batch itself (the key holds something
                // else): sending it again would be refused again.
                waiting.drain(..batch);
                metrics::counter!(EVENTS_DROPPED_TOTAL).increment(batch as u64);
                tracing::warn!(
                    batch,
                    key,
                    reason = error.reason,
                    "Redis refused a batch of events"
                );
                continue;
            }
            Err(_) => {}
        }
        // Redis is away: keep taking events (so recording never waits),
        // the newest kept, until it is back.
        if *health.borrow_and_update() {
            continue;
        }
        loop {
            tokio::select! {
                next = pending.recv() => match next {
                    Some(outgoing) => {
                        if waiting.len() >= BUFFERED_EVENTS {
                            waiting.pop_front();
                            metrics::counter!(EVENTS_DROPPED_TOTAL).increment(1);
                        }
                        waiting.push_back(outgoing);
                    }
                    None => return,
                },
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *health.borrow_and_update() {
                        break;
                    }
                }
            }
        }
    }
}
