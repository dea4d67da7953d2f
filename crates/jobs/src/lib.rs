//! `corral-jobs`: requests accepted at once and answered later.
//!
//! An agent that runs for hours should not hold a socket open through a
//! queue of minutes. A job is a request the proxy accepts with `202` and
//! runs through the same stack as a live one (the submitter's identity
//! and quotas, priority, cache, retries, degradation); its answer is
//! kept, chunk by chunk, to be read whole, followed live, or replayed
//! from the start.
//!
//! This crate keeps jobs; the proxy runs them. [`Jobs`] is the store:
//!
//! - [`Jobs::memory`]: this process's memory, bounded by `max_jobs` and
//!   `max_total_bytes` (finished jobs go oldest first; a submission past
//!   the bounds is refused with [`JobsRefused::Full`]); gone with the
//!   process.
//! - [`Jobs::redis`]: durable in Redis and shared by the replicas: a
//!   stream with a consumer group; the replica running a job renews its
//!   claim, and one that stops (killed, partitioned) loses it to another
//!   after `lease`, which runs the job again from the start. A job runs
//!   at most once at a time: every write of a runner checks that the
//!   attempt is still its own.
//!
//! Both hand the jobs to run as [`Claim`]s on a channel. A runner tells
//! the store how a claim goes: [`started`](Jobs::started),
//! [`dispatched`](Jobs::dispatched) (sent upstream: `running`),
//! [`head`](Jobs::head), [`append`](Jobs::append) the answer's chunks,
//! [`finish`](Jobs::finish), and, with Redis, [`renew`](Jobs::renew).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use corral_jobs::{Head, JobRequest, Jobs, JobsConfig, Outcome, Status};
//!
//! let (jobs, mut claims) = Jobs::memory(JobsConfig::default());
//! let request = JobRequest {
//!     method: "POST".into(),
//!     path: "/api/generate".into(),
//!     headers: vec![],
//!     body: r#"{"model":"llama3","prompt":"hi"}"#.into(),
//!     agent: "planner".into(),
//!     authenticated: false,
//!     callback_url: None,
//!     client: None,
//!     idempotency_key: None,
//! };
//! let accepted = jobs.submit(request).await.unwrap().state;
//! assert_eq!(accepted.status, Status::Queued);
//!
//! // A runner takes it and tells how it goes.
//! let claim = claims.recv().await.unwrap();
//! jobs.started(&claim, "replica-1").await;
//! jobs.dispatched(&claim).await;
//! jobs.head(&claim, Head { status: 200, headers: vec![] }).await;
//! jobs.append(&claim, vec!["{\"response\":\"hello\"}".into()]).await;
//! jobs.finish(&claim, &Outcome::Done).await;
//!
//! let state = jobs.state(&accepted.id).await.unwrap().unwrap();
//! assert_eq!(state.status, Status::Done);
//! let answer = jobs.chunks(&accepted.id, 0).await.unwrap().unwrap();
//! assert_eq!(answer.chunks.concat(), b"{\"response\":\"hello\"}");
//! # });
//! ```

mod config;
mod job;
mod memory;
pub mod metrics;
mod redis;
mod store;

pub use config::JobsConfig;
pub use job::{Chunks, Head, JobId, JobRequest, JobState, Outcome, Status, Submitted};
pub use store::{Claim, Claims, Follow, Jobs, JobsRefused, Renewal};
