//! The one handle the proxy holds: jobs in memory, or in Redis.

use std::sync::Arc;

use bytes::Bytes;
use corral_core::RedisState;
use tokio::sync::{mpsc, watch};

use crate::job::{Chunks, Head, JobId, JobRequest, JobState, Outcome, Submitted};
use crate::memory::MemoryJobs;
use crate::redis::RedisJobs;
use crate::JobsConfig;

/// A job handed to a runner: run it, tell the store how it goes.
#[derive(Debug)]
pub struct Claim {
    /// The job.
    pub id: JobId,
    /// What to run.
    pub request: JobRequest,
    /// Which start this is, from 1: a job taken over from a replica that
    /// died starts again.
    pub attempt: u32,
    /// Becomes `true` when the owner cancels it: stop generating.
    pub cancelled: watch::Receiver<bool>,
}

/// Where a runner takes the jobs to run, one at a time.
pub struct Claims {
    inner: ClaimsInner,
}

enum ClaimsInner {
    Memory(mpsc::UnboundedReceiver<Claim>),
    Redis(mpsc::Receiver<Claim>),
}

impl Claims {
    /// The next job to run; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Claim> {
        match &mut self.inner {
            ClaimsInner::Memory(r) => r.recv().await,
            ClaimsInner::Redis(r) => r.recv().await,
        }
    }
}

/// What renewing a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still this runner's: go on.
    Kept,
    /// Another replica has it (or may, after a lease cut off from
    /// Redis): stop, it is not this runner's to end.
    Lost,
    /// Its owner cancelled it: stop and end it as cancelled.
    Cancelled,
}

/// Why a job was not accepted, or cannot be read now.
#[derive(Debug, Clone, PartialEq)]
pub enum JobsRefused {
    /// As many jobs as `max_jobs` (or their bytes) are held.
    Full {
        /// Jobs held.
        held: usize,
    },
    /// The agent holds `max_jobs_per_agent` jobs not yet ended.
    AgentFull {
        /// Its jobs not yet ended.
        held: usize,
    },
    /// The shared store does not answer.
    Unavailable(String),
}

impl std::fmt::Display for JobsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobsRefused::Full { held } => write!(
                f,
                "the job store is full ({held} jobs held): retry after some finish"
            ),
            JobsRefused::AgentFull { held } => write!(
                f,
                "this agent has {held} jobs not yet ended, as many as [jobs] max_jobs_per_agent allows: retry after some end"
            ),
            JobsRefused::Unavailable(reason) => {
                write!(f, "the job store does not answer: {reason}")
            }
        }
    }
}

impl std::error::Error for JobsRefused {}

/// Jobs: in this process's memory, or durable in Redis and shared by the
/// replicas. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryJobs>),
    Redis(Arc<RedisJobs>),
}

corral_core::impl_debug!(Jobs {});

/// Where a reader waits for a job's next change.
pub struct Follow {
    inner: FollowInner,
}

enum FollowInner {
    Memory(watch::Receiver<u64>),
    /// Redis: polled, more slowly the longer nothing comes.
    Poll(std::time::Duration),
}

/// The first and the longest wait between two polls of a job in Redis.
const POLL: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(50),
    std::time::Duration::from_secs(1),
);

impl Follow {
    /// Returns when the job may have changed (at once if it changed since
    /// the last call; after a short poll with Redis).
    pub async fn changed(&mut self) {
        match &mut self.inner {
            FollowInner::Memory(version) => {
                // An error: the job was dropped; the next read says so.
                let _ = version.changed().await;
            }
            FollowInner::Poll(every) => {
                tokio::time::sleep(*every).await;
                *every = (*every * 2).min(POLL.1);
            }
        }
    }

    /// Something came: the next wait is short again.
    pub fn progressed(&mut self) {
        if let FollowInner::Poll(every) = &mut self.inner {
            *every = POLL.0;
        }
    }
}

impl Jobs {
    /// Jobs in memory, and the claims a runner takes them from.
    pub fn memory(config: JobsConfig) -> (Self, Claims) {
        let (jobs, claims) = MemoryJobs::new(config);
        (
            Self {
                backend: Backend::Memory(Arc::new(jobs)),
            },
            Claims {
                inner: ClaimsInner::Memory(claims),
            },
        )
    }

    /// Jobs in Redis under `state`'s prefix, and the claims this replica
    /// takes: its own submissions, others', and those of replicas that
    /// stopped renewing theirs. Spawns the claimer on the current runtime.
    pub fn redis(state: RedisState, config: JobsConfig) -> (Self, Claims) {
        let (jobs, claims) = RedisJobs::start(state, config);
        (
            Self {
                backend: Backend::Redis(jobs),
            },
            Claims {
                inner: ClaimsInner::Redis(claims),
            },
        )
    }

    /// Accepts `request` as a new job, or answers the job the same agent
    /// already submitted with the same idempotency key.
    pub async fn submit(&self, request: JobRequest) -> Result<Submitted, JobsRefused> {
        match &self.backend {
            Backend::Memory(m) => m.submit(request),
            Backend::Redis(r) => r.submit(request).await,
        }
    }

    /// The job's state, if it is held.
    pub async fn state(&self, id: &JobId) -> Result<Option<JobState>, JobsRefused> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.state(id)),
            Backend::Redis(r) => r.state(id).await,
        }
    }

    /// The request a job runs.
    pub async fn request(&self, id: &JobId) -> Result<Option<JobRequest>, JobsRefused> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.request(id)),
            Backend::Redis(r) => r.request(id).await,
        }
    }

    /// The job's answer from chunk `from` on.
    pub async fn chunks(&self, id: &JobId, from: usize) -> Result<Option<Chunks>, JobsRefused> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.chunks(id, from)),
            Backend::Redis(r) => r.chunks(id, from).await,
        }
    }

    /// Where to wait for the job's next change; take it before reading,
    /// so no change is missed between the read and the wait.
    pub fn follow(&self, id: &JobId) -> Option<Follow> {
        let inner = match &self.backend {
            Backend::Memory(m) => FollowInner::Memory(m.follow(id)?),
            Backend::Redis(_) => FollowInner::Poll(POLL.0),
        };
        Some(Follow { inner })
    }

    /// Cancels the job: at once if no runner has it, else its runner
    /// stops it (the upstream generation with it).
    pub async fn cancel(&self, id: &JobId) -> Result<Option<JobState>, JobsRefused> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.cancel(id)),
            Backend::Redis(r) => r.cancel(id).await,
        }
    }

    /// A runner took `claim` on `replica`: it is being started.
    pub async fn started(&self, claim: &Claim, replica: &str) -> bool {
        match &self.backend {
            Backend::Memory(m) => m.started(claim, replica),
            Backend::Redis(r) => r.started(claim).await,
        }
    }

    /// The job's request left the stack for the upstream: it runs.
    pub async fn dispatched(&self, claim: &Claim) -> bool {
        match &self.backend {
            Backend::Memory(m) => m.dispatched(claim),
            Backend::Redis(r) => r.dispatched(claim).await,
        }
    }

    /// The head of the job's answer came.
    pub async fn head(&self, claim: &Claim, head: Head) -> bool {
        match &self.backend {
            Backend::Memory(m) => m.head(claim, head),
            Backend::Redis(r) => r.head(claim, head).await,
        }
    }

    /// More of the answer; false when the job is no longer this runner's
    /// (cancelled, taken over) or the answer is over `max_result_bytes`:
    /// stop.
    pub async fn append(&self, claim: &Claim, chunks: Vec<Bytes>) -> bool {
        match &self.backend {
            Backend::Memory(m) => m.append(claim, chunks),
            Backend::Redis(r) => r.append(claim, chunks).await,
        }
    }

    /// The job ended; its final state, if this runner still had it.
    pub async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Option<JobState> {
        match &self.backend {
            Backend::Memory(m) => m.finish(claim, outcome),
            Backend::Redis(r) => r.finish(claim, outcome).await,
        }
    }

    /// Forgets a claim this runner will not end: the job was lost to
    /// another replica, or had ended before it started.
    pub fn abandon(&self, claim: &Claim) {
        if let Backend::Redis(r) = &self.backend {
            r.abandon(claim);
        }
    }

    /// Keeps this runner's claim on the job, and tells whether it must
    /// stop: another replica took it over, or its owner cancelled it.
    pub async fn renew(&self, claim: &Claim) -> Renewal {
        match &self.backend {
            Backend::Memory(_) => Renewal::Kept,
            Backend::Redis(r) => r.renew(claim).await,
        }
    }

    /// How often a runner must [`renew`](Self::renew) its claims, if at
    /// all.
    pub fn renew_every(&self) -> Option<std::time::Duration> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.lease() / 3),
        }
    }

    /// Jobs accepted and not yet started by a runner, to tell a queued
    /// job roughly how much is ahead of it.
    pub async fn waiting(&self) -> usize {
        match &self.backend {
            Backend::Memory(_) => 0,
            Backend::Redis(r) => r.waiting().await,
        }
    }
}
