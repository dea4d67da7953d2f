//! Jobs in this process's memory: bounded, gone with it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_core::lock;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::job::{Chunks, Head, JobId, JobRequest, JobState, Outcome, Status, Submitted};
use crate::store::{Claim, JobsRefused};
use crate::JobsConfig;

/// One job held in memory.
struct Held {
    state: Mutex<JobState>,
    request: JobRequest,
    chunks: Mutex<Vec<Bytes>>,
    /// Bumped at every change, for readers that follow.
    version: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
}

impl Held {
    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

/// The memory backend.
pub(crate) struct MemoryJobs {
    config: JobsConfig,
    jobs: Mutex<Table>,
    runnable: mpsc::UnboundedSender<Claim>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<JobId, Arc<Held>>,
    /// Jobs by their submitter and idempotency key.
    by_key: HashMap<(String, String), JobId>,
    /// Finished jobs, oldest first, with when they finished.
    finished: VecDeque<(Instant, JobId)>,
    /// Bytes of every answer held.
    bytes: usize,
}

impl MemoryJobs {
    /// A store, and where the jobs it accepts are handed to a runner.
    pub(crate) fn new(config: JobsConfig) -> (Self, mpsc::UnboundedReceiver<Claim>) {
        let (runnable, claims) = mpsc::unbounded_channel();
        (
            Self {
                config,
                jobs: Mutex::new(Table::default()),
                runnable,
            },
            claims,
        )
    }

    fn held(&self, id: &JobId) -> Option<Arc<Held>> {
        let mut table = lock(&self.jobs);
        self.expire(&mut table, Instant::now());
        table.by_id.get(id).cloned()
    }

    pub(crate) fn submit(&self, request: JobRequest) -> Result<Submitted, JobsRefused> {
        let key = request
            .idempotency_key
            .clone()
            .map(|k| (request.agent.clone(), k));
        if let Some(state) = key.as_ref().and_then(|k| self.keyed(k)) {
            return Ok(Submitted {
                state,
                repeated: true,
            });
        }
        let id = JobId::generate();
        let state = JobState::queued(id.clone(), &request);
        let (cancel, cancelled) = watch::channel(false);
        let held = Arc::new(Held {
            state: Mutex::new(state.clone()),
            request: request.clone(),
            chunks: Mutex::default(),
            version: watch::channel(0).0,
            cancel,
        });
        {
            let mut table = lock(&self.jobs);
            self.expire(&mut table, Instant::now());
            let agent_held = unfinished_of(&table, &request.agent);
            if agent_held >= self.config.max_jobs_per_agent {
                return Err(JobsRefused::AgentFull { held: agent_held });
            }
            while table.by_id.len() >= self.config.max_jobs
                || table.bytes + request.body.len() > self.config.max_total_bytes
            {
                if !evict_oldest(&mut table) {
                    return Err(JobsRefused::Full {
                        held: table.by_id.len(),
                    });
                }
            }
            table.bytes += request.body.len();
            table.by_id.insert(id.clone(), held);
            if let Some(key) = key {
                table.by_key.insert(key, id.clone());
            }
        }
        let _ = self.runnable.send(Claim {
            id,
            request,
            attempt: 1,
            cancelled,
        });
        Ok(Submitted {
            state,
            repeated: false,
        })
    }

    /// The job an agent already submitted with this key, if still held.
    fn keyed(&self, key: &(String, String)) -> Option<JobState> {
        let id = lock(&self.jobs).by_key.get(key).cloned()?;
        self.state(&id)
    }

    /// Drops finished jobs past their time.
    fn expire(&self, table: &mut Table, now: Instant) {
        while let Some((at, _)) = table.finished.front() {
            if now.duration_since(*at) < self.config.result_ttl {
                break;
            }
            evict_oldest(table);
        }
    }

    pub(crate) fn state(&self, id: &JobId) -> Option<JobState> {
        let mut table = lock(&self.jobs);
        self.expire(&mut table, Instant::now());
        let held = table.by_id.get(id)?.clone();
        drop(table);
        let state = lock(&held.state).clone();
        Some(state)
    }

    pub(crate) fn request(&self, id: &JobId) -> Option<JobRequest> {
        self.held(id).map(|h| h.request.clone())
    }

    pub(crate) fn chunks(&self, id: &JobId, from: usize) -> Option<Chunks> {
        let held = self.held(id)?;
        let (ended, attempt) = {
            let state = lock(&held.state);
            (state.status.is_final(), state.attempts)
        };
        let chunks = lock(&held.chunks);
        Some(Chunks {
            chunks: chunks.iter().skip(from).cloned().collect(),
            ended,
            attempt,
        })
    }

    pub(crate) fn follow(&self, id: &JobId) -> Option<watch::Receiver<u64>> {
        self.held(id).map(|h| h.version.subscribe())
    }

    pub(crate) fn cancel(&self, id: &JobId) -> Option<JobState> {
        let held = self.held(id)?;
        let mut state = lock(&held.state);
        if !state.status.is_final() {
            held.cancel.send_replace(true);
            if state.status == Status::Queued && state.attempts == 0 {
                // Never picked up: nothing else will end it.
                Outcome::Cancelled.apply(&mut state);
                drop(state);
                self.finished(id);
                held.changed();
                return self.state(id);
            }
        }
        Some(state.clone())
    }

    /// Updates a job's state, if it is still held and not ended.
    fn update(&self, id: &JobId, change: impl FnOnce(&mut JobState, &Held)) -> bool {
        let Some(held) = self.held(id) else {
            return false;
        };
        let mut state = lock(&held.state);
        if state.status.is_final() {
            return false;
        }
        change(&mut state, &held);
        let ended = state.status.is_final();
        drop(state);
        if ended {
            self.finished(id);
        }
        held.changed();
        true
    }

    fn finished(&self, id: &JobId) {
        lock(&self.jobs)
            .finished
            .push_back((Instant::now(), id.clone()));
    }

    pub(crate) fn started(&self, claim: &Claim, replica: &str) -> bool {
        self.update(&claim.id, |state, _| {
            state.attempts = claim.attempt;
            state.started_at = Some(corral_core::unix_now_f64());
            state.replica = Some(replica.to_string());
        })
    }

    pub(crate) fn dispatched(&self, claim: &Claim) -> bool {
        self.update(&claim.id, |state, _| state.status = Status::Running)
    }

    pub(crate) fn head(&self, claim: &Claim, head: Head) -> bool {
        self.update(&claim.id, |state, _| state.response = Some(head))
    }

    /// Appends answer chunks; false once the answer is over its bound.
    pub(crate) fn append(&self, claim: &Claim, chunks: Vec<Bytes>) -> bool {
        let size: usize = chunks.iter().map(Bytes::len).sum();
        if !self.make_room(size) {
            self.update(&claim.id, |state, _| state.truncated = true);
            return false;
        }
        let mut fits = true;
        let max = self.config.max_result_bytes;
        let updated = self.update(&claim.id, |state, held| {
            if state.bytes as usize + size > max {
                fits = false;
                state.truncated = true;
                return;
            }
            state.bytes += size as u64;
            lock(&held.chunks).extend(chunks);
        });
        if updated && fits {
            lock(&self.jobs).bytes += size;
        }
        updated && fits
    }

    /// Whether `size` more bytes fit under `max_total_bytes`, once the
    /// oldest finished jobs have made room if they must.
    fn make_room(&self, size: usize) -> bool {
        let mut table = lock(&self.jobs);
        while table.bytes + size > self.config.max_total_bytes {
            if !evict_oldest(&mut table) {
                return false;
            }
        }
        true
    }

    pub(crate) fn finish(&self, claim: &Claim, outcome: &Outcome) -> Option<JobState> {
        let mut ended = None;
        self.update(&claim.id, |state, _| {
            outcome.apply(state);
            ended = Some(state.clone());
        });
        ended
    }
}

/// Jobs of `agent` not yet ended.
fn unfinished_of(table: &Table, agent: &str) -> usize {
    table
        .by_id
        .values()
        .filter(|held| held.request.agent == agent && !lock(&held.state).status.is_final())
        .count()
}

/// Drops the oldest finished job; false when none has finished.
fn evict_oldest(table: &mut Table) -> bool {
    let Some((_, id)) = table.finished.pop_front() else {
        return false;
    };
    if let Some(held) = table.by_id.remove(&id) {
        let bytes = lock(&held.state).bytes as usize + held.request.body.len();
        table.bytes = table.bytes.saturating_sub(bytes);
        if let Some(key) = &held.request.idempotency_key {
            table
                .by_key
                .remove(&(held.request.agent.clone(), key.clone()));
        }
    }
    true
}
