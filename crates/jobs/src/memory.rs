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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test fails by panicking

    use std::time::Duration;

    use crate::{Head, JobRequest, Jobs, JobsConfig, JobsRefused, Outcome, Status};

    fn request(body: &str) -> JobRequest {
        JobRequest {
            method: "POST".into(),
            path: "/api/generate".into(),
            headers: vec![],
            body: body.to_string().into(),
            agent: "planner".into(),
            authenticated: false,
            callback_url: None,
            client: None,
            idempotency_key: None,
        }
    }

    fn config(max_jobs: usize, max_result_bytes: usize) -> JobsConfig {
        JobsConfig {
            max_jobs,
            max_result_bytes,
            result_ttl: Duration::from_secs(60),
            ..JobsConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn finished_jobs_make_room_oldest_first_and_running_ones_never_do() {
        let (jobs, mut claims) = Jobs::memory(config(2, 1024));
        let first = jobs.submit(request("1")).await.unwrap().state;
        let second = jobs.submit(request("2")).await.unwrap().state;
        assert!(matches!(
            jobs.submit(request("3")).await,
            Err(JobsRefused::Full { held: 2 })
        ));
        let claim = claims.recv().await.unwrap();
        assert_eq!(claim.id, first.id);
        jobs.started(&claim, "r").await;
        jobs.finish(&claim, &Outcome::Done).await;
        // The finished one gives its place; the queued one keeps its own.
        let third = jobs.submit(request("3")).await.unwrap().state;
        assert!(jobs.state(&first.id).await.unwrap().is_none());
        assert!(jobs.state(&second.id).await.unwrap().is_some());
        assert!(jobs.state(&third.id).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_job_is_readable_for_result_ttl_then_gone() {
        let (jobs, mut claims) = Jobs::memory(config(10, 1024));
        let job = jobs.submit(request("1")).await.unwrap().state;
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        jobs.finish(&claim, &Outcome::Done).await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            jobs.state(&job.id).await.unwrap().unwrap().status,
            Status::Done
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(jobs.state(&job.id).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_over_its_bound_is_refused_and_marked_truncated() {
        let (jobs, mut claims) = Jobs::memory(config(10, 8));
        let job = jobs.submit(request("1")).await.unwrap().state;
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        assert!(jobs.append(&claim, vec!["12345".into()]).await);
        assert!(!jobs.append(&claim, vec!["6789".into()]).await);
        let state = jobs.state(&job.id).await.unwrap().unwrap();
        assert!(state.truncated);
        assert_eq!(state.bytes, 5);
        assert_eq!(
            jobs.chunks(&job.id, 0)
                .await
                .unwrap()
                .unwrap()
                .chunks
                .concat(),
            b"12345"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_held_together_stay_under_max_total_bytes_finished_ones_making_room() {
        let config = JobsConfig {
            max_total_bytes: 20,
            max_result_bytes: 12,
            ..config(10, 12)
        };
        let (jobs, mut claims) = Jobs::memory(config);
        let old = jobs.submit(request("")).await.unwrap().state;
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        assert!(jobs.append(&claim, vec!["0123456789".into()]).await);
        jobs.finish(&claim, &Outcome::Done).await;
        let running = jobs.submit(request("")).await.unwrap().state;
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        assert!(jobs.append(&claim, vec!["0123456789".into()]).await);
        // 20 held: the finished job makes room for more.
        assert!(jobs.append(&claim, vec!["ab".into()]).await);
        assert!(jobs.state(&old.id).await.unwrap().is_none());
        let other = jobs.submit(request("")).await.unwrap().state;
        let third = claims.recv().await.unwrap();
        jobs.started(&third, "r").await;
        // 12 held by a running job and 9 more: nothing finished to drop.
        assert!(!jobs.append(&third, vec!["012345678".into()]).await);
        assert!(jobs.state(&other.id).await.unwrap().unwrap().truncated);
        assert_eq!(jobs.state(&running.id).await.unwrap().unwrap().bytes, 12);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_idempotency_key_from_the_same_agent_gets_the_same_job() {
        let (jobs, _claims) = Jobs::memory(config(10, 1024));
        let keyed = |agent: &str| JobRequest {
            agent: agent.into(),
            idempotency_key: Some("saga-7:2:action".into()),
            ..request("1")
        };
        let first = jobs.submit(keyed("planner")).await.unwrap();
        let again = jobs.submit(keyed("planner")).await.unwrap();
        assert!(!first.repeated && again.repeated);
        assert_eq!(first.state.id, again.state.id);
        let other = jobs.submit(keyed("writer")).await.unwrap();
        assert!(!other.repeated, "another agent's key is its own");
        assert_ne!(other.state.id, first.state.id);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_cancelled_before_it_ran_ends_at_once_and_a_running_one_is_told() {
        let (jobs, mut claims) = Jobs::memory(config(10, 1024));
        let queued = jobs.submit(request("1")).await.unwrap().state;
        let cancelled = jobs.cancel(&queued.id).await.unwrap().unwrap();
        assert_eq!(cancelled.status, Status::Cancelled);
        // Its claim still comes; starting it is refused.
        let stale = claims.recv().await.unwrap();
        assert!(!jobs.started(&stale, "r").await);

        let running = jobs.submit(request("2")).await.unwrap().state;
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        jobs.dispatched(&claim).await;
        let mut told = claim.cancelled.clone();
        let state = jobs.cancel(&running.id).await.unwrap().unwrap();
        assert_eq!(state.status, Status::Running, "its runner ends it");
        told.wait_for(|c| *c).await.unwrap();
        jobs.finish(&claim, &Outcome::Cancelled).await;
        assert_eq!(
            jobs.state(&running.id).await.unwrap().unwrap().status,
            Status::Cancelled
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_is_woken_by_each_change_and_an_error_status_fails_the_job() {
        let (jobs, mut claims) = Jobs::memory(config(10, 1024));
        let job = jobs.submit(request("1")).await.unwrap().state;
        let mut follow = jobs.follow(&job.id).unwrap();
        let claim = claims.recv().await.unwrap();
        jobs.started(&claim, "r").await;
        follow.changed().await;
        jobs.head(
            &claim,
            Head {
                status: 404,
                headers: vec![],
            },
        )
        .await;
        follow.changed().await;
        let ended = jobs.finish(&claim, &Outcome::Done).await.unwrap();
        assert_eq!(ended.status, Status::Failed);
        assert_eq!(ended.reason.as_deref(), Some("answered 404"));
    }
}
