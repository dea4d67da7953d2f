//! What the upstream experienced, for tests to assert on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Counters of everything the simulated Ollama saw, as served on
/// `GET /mock/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    /// Requests received, all paths.
    pub requests: u64,
    /// Requests received, by path.
    pub by_path: BTreeMap<String, u64>,
    /// Inference requests holding a generation slot now.
    pub in_flight: u64,
    /// The most inference requests ever holding slots at once, all models.
    pub peak_in_flight: u64,
    /// The most at once, per model.
    pub peak_in_flight_by_model: BTreeMap<String, u64>,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// The most ever waiting at once.
    pub peak_queued: u64,
    /// Requests refused with 503 "server busy" because the queue was full.
    pub busy_rejections: u64,
    /// Responses sent to their end.
    pub completed: u64,
    /// Requests whose client went away before the response ended,
    /// whether waiting, generating or streaming.
    pub cancelled: u64,
    /// Model loads (a request named a model that was not loaded).
    pub model_loads: u64,
    /// Loads that evicted another model.
    pub model_evictions: u64,
    /// Loads given up because the request that started them left before
    /// the model was ready, as Ollama does (ollama#7408).
    pub aborted_loads: u64,
    /// Faults injected (by header or by rate).
    pub faults_injected: u64,
    /// Response chunks produced by generation streams.
    pub chunks_sent: u64,
    /// Tokens generated.
    pub tokens_generated: u64,
    /// Streams paused now, waiting for `POST /mock/release`.
    pub paused: u64,
}

/// One request as the simulated Ollama received and answered it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct RecordedRequest {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// The method.
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// The headers, names in lower case; repeated headers joined by ", ".
    pub headers: BTreeMap<String, String>,
    /// The body's first 64 KiB, as text (lossy).
    pub body: String,
    /// The body's full length in bytes.
    pub body_len: u64,
    /// The answer's status.
    pub status: u16,
    /// The answer's body as produced, its first 1 MiB, as text (lossy).
    pub response: String,
    /// Whether the answer was sent to its end.
    pub completed: bool,
    /// Whether the client went away first.
    pub cancelled: bool,
}

const BODY_KEEP: usize = 64 * 1024;
const RESPONSE_KEEP: usize = 1024 * 1024;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) peak_in_flight: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) peak_queued: AtomicU64,
    pub(crate) busy_rejections: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) model_loads: AtomicU64,
    pub(crate) model_evictions: AtomicU64,
    pub(crate) aborted_loads: AtomicU64,
    pub(crate) faults_injected: AtomicU64,
    pub(crate) chunks_sent: AtomicU64,
    pub(crate) tokens_generated: AtomicU64,
    pub(crate) paused: AtomicU64,
    pub(crate) maps: Mutex<Maps>,
}

#[derive(Default)]
pub(crate) struct Maps {
    by_path: BTreeMap<String, u64>,
    in_flight_by_model: BTreeMap<String, u64>,
    peak_by_model: BTreeMap<String, u64>,
    log: VecDeque<Arc<Mutex<RecordedRequest>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let maps = lock(&self.maps);
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            requests: get(&self.requests),
            by_path: maps.by_path.clone(),
            in_flight: get(&self.in_flight),
            peak_in_flight: get(&self.peak_in_flight),
            peak_in_flight_by_model: maps.peak_by_model.clone(),
            queued: get(&self.queued),
            peak_queued: get(&self.peak_queued),
            busy_rejections: get(&self.busy_rejections),
            completed: get(&self.completed),
            cancelled: get(&self.cancelled),
            model_loads: get(&self.model_loads),
            model_evictions: get(&self.model_evictions),
            aborted_loads: get(&self.aborted_loads),
            faults_injected: get(&self.faults_injected),
            chunks_sent: get(&self.chunks_sent),
            tokens_generated: get(&self.tokens_generated),
            paused: get(&self.paused),
        }
    }

    /// Zeroes the totals and the log; what is in flight now stays counted.
    pub(crate) fn reset(&self) {
        for counter in [
            &self.requests,
            &self.busy_rejections,
            &self.completed,
            &self.cancelled,
            &self.model_loads,
            &self.model_evictions,
            &self.aborted_loads,
            &self.faults_injected,
            &self.chunks_sent,
            &self.tokens_generated,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        self.peak_queued
            .store(self.queued.load(Ordering::SeqCst), Ordering::SeqCst);
        let mut maps = lock(&self.maps);
        maps.by_path.clear();
        maps.log.clear();
        let current = maps.in_flight_by_model.clone();
        maps.peak_by_model = current.into_iter().filter(|(_, n)| *n > 0).collect();
    }

    pub(crate) fn log(&self) -> Vec<RecordedRequest> {
        lock(&self.maps)
            .log
            .iter()
            .map(|r| lock(r).clone())
            .collect()
    }

    pub(crate) fn record_arrival(
        &self,
        capacity: usize,
        head: &http::request::Parts,
    ) -> Arc<Mutex<RecordedRequest>> {
        let seq = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &head.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value)
                })
                .or_insert(value);
        }
        let record = Arc::new(Mutex::new(RecordedRequest {
            seq,
            method: head.method.to_string(),
            uri: head.uri.to_string(),
            headers,
            ..Default::default()
        }));
        let mut maps = lock(&self.maps);
        *maps.by_path.entry(head.uri.path().to_string()).or_default() += 1;
        if capacity > 0 {
            if maps.log.len() >= capacity {
                maps.log.pop_front();
            }
            maps.log.push_back(record.clone());
        }
        record
    }

    pub(crate) fn enter_slot(&self, model: &str) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut maps = lock(&self.maps);
        let n = maps
            .in_flight_by_model
            .entry(model.to_string())
            .or_default();
        *n += 1;
        let n = *n;
        let peak = maps.peak_by_model.entry(model.to_string()).or_default();
        *peak = (*peak).max(n);
    }

    pub(crate) fn leave_slot(&self, model: &str) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(n) = lock(&self.maps).in_flight_by_model.get_mut(model) {
            *n = n.saturating_sub(1);
        }
    }

    pub(crate) fn leave_queue(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RecordedRequest {
    pub(crate) fn set_body(&mut self, body: &[u8]) {
        self.body_len = body.len() as u64;
        self.body = String::from_utf8_lossy(&body[..body.len().min(BODY_KEEP)]).into_owned();
    }

    pub(crate) fn push_response(&mut self, chunk: &[u8]) {
        let room = RESPONSE_KEEP.saturating_sub(self.response.len());
        if room > 0 {
            self.response
                .push_str(&String::from_utf8_lossy(&chunk[..chunk.len().min(room)]));
        }
    }
}
