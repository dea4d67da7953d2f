//! Jobs in Redis, durable and shared by the replicas.
//!
//! - `jobs:stream`, a stream with the consumer group `runners`: one entry
//!   per job not yet ended. A replica reads new entries with
//!   `XREADGROUP`; the entry stays pending, owned by it, while it runs
//!   the job. It renews that claim every third of the lease by claiming
//!   its own entry again (`XCLAIM` resets the entry's idle time), only
//!   while it still owns it. An entry idle for a whole lease belongs to a
//!   replica that stopped: another takes it with `XAUTOCLAIM` and runs
//!   the job again from the start. A job that ends is acknowledged and
//!   deleted from the stream.
//! - `job:{id}`, a hash: the state (JSON), the request (JSON) and its
//!   body, the attempt number, the stream entry, and `final`/`cancel`
//!   flags. Every write of a runner is a script that checks the attempt
//!   is still its own and the job has not ended, so a replica that was
//!   taken over cannot write over the one that took over.
//! - `job:{id}:chunks`, a list: the answer's chunks, in order.
//!
//! Finished jobs expire after `result_ttl`. Submissions are announced on
//! `jobs:new` so idle replicas claim at once; cancellations on
//! `jobs:cancel`, so the replica running the job stops it.

//!
//! A runner whose writes meet a Redis that does not answer keeps trying
//! for as long as its lease could still be valid; a runner that has not
//! renewed its claim for a whole lease (cut off from Redis) counts it
//! lost and stops, since another replica may be running the job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_core::{lock, RedisState, StateUnavailable};
use redis::Value;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::job::{Chunks, JobId, JobRequest, JobState, Outcome, Submitted};
use crate::store::{Claim, JobsRefused};
use crate::JobsConfig;

mod claimer;
mod scripts;
mod writes;

use scripts::Scripts;

const GROUP: &str = "runners";
/// A job not ended after this long is dropped from Redis anyway: nothing
/// stays forever if every replica is gone.
const UNFINISHED_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A job this replica runs.
struct Running {
    attempt: u32,
    state: JobState,
    entry: String,
    cancel: watch::Sender<bool>,
    /// When its claim was last renewed (or taken).
    renewed: Instant,
}

/// The Redis backend.
pub(crate) struct RedisJobs {
    state: RedisState,
    config: JobsConfig,
    scripts: Scripts,
    running: Mutex<HashMap<JobId, Running>>,
    /// Where the next `XAUTOCLAIM` scan starts.
    cursor: Mutex<String>,
    wake: Notify,
}

impl RedisJobs {
    pub(crate) fn start(
        state: RedisState,
        config: JobsConfig,
    ) -> (Arc<Self>, mpsc::Receiver<Claim>) {
        let (claims, receiver) = mpsc::channel(config.max_running);
        let jobs = Arc::new(Self {
            state,
            config,
            scripts: Scripts::new(),
            running: Mutex::default(),
            cursor: Mutex::new("0-0".into()),
            wake: Notify::new(),
        });
        tokio::spawn(claimer::claim_loop(jobs.clone(), claims));
        tokio::spawn(claimer::listen(jobs.clone()));
        (jobs, receiver)
    }

    pub(crate) fn lease(&self) -> Duration {
        self.config.lease
    }

    fn stream(&self) -> String {
        self.state.key("jobs:stream")
    }

    fn hash(&self, id: &JobId) -> String {
        self.state.key(&format!("job:{id}"))
    }

    fn chunk_list(&self, id: &JobId) -> String {
        self.state.key(&format!("job:{id}:chunks"))
    }

    /// The agent's jobs not yet ended, by submission time.
    fn agent_set(&self, agent: &str) -> String {
        self.state.key(&format!("jobs:agent:{agent}"))
    }

    fn ttl_ms(&self) -> String {
        self.config.result_ttl.as_millis().to_string()
    }

    pub(crate) async fn submit(&self, request: JobRequest) -> Result<Submitted, JobsRefused> {
        let id = JobId::generate();
        if let Some(key) = &request.idempotency_key {
            if let Some(state) = self.keyed(&request.agent, key, &id).await? {
                return Ok(Submitted {
                    state,
                    repeated: true,
                });
            }
        }
        let held: usize = self
            .state
            .query(redis::cmd("XLEN").arg(self.stream()))
            .await
            .map_err(unavailable)?;
        if held >= self.config.max_jobs {
            return Err(JobsRefused::Full { held });
        }
        let mine = self.agent_set(&request.agent);
        let now_ms = (corral_core::unix_now_f64() * 1000.0) as u64;
        let mut count = redis::pipe();
        // Entries of jobs that vanished unended (every replica gone for
        // a week) stop counting when their hash would have expired.
        count
            .cmd("ZREMRANGEBYSCORE")
            .arg(&mine)
            .arg("-inf")
            .arg(now_ms.saturating_sub(UNFINISHED_TTL_MS))
            .ignore()
            .cmd("ZCARD")
            .arg(&mine);
        let (agent_held,): (usize,) = self.state.pipeline(&count).await.map_err(unavailable)?;
        if agent_held >= self.config.max_jobs_per_agent {
            return Err(JobsRefused::AgentFull { held: agent_held });
        }
        let state = JobState::queued(id.clone(), &request);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&mine)
            .arg(now_ms)
            .arg(id.as_str())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&mine)
            .arg(UNFINISHED_TTL_MS)
            .ignore()
            .cmd("HSET")
            .arg(self.hash(&id))
            .arg("state")
            .arg(to_json(&state))
            .arg("request")
            .arg(to_json(&request))
            .arg("body")
            .arg(request.body.as_ref())
            .arg("attempt")
            .arg("0")
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.hash(&id))
            .arg(UNFINISHED_TTL_MS)
            .ignore()
            .cmd("XADD")
            .arg(self.stream())
            .arg("*")
            .arg("id")
            .arg(id.as_str())
            .ignore();
        self.state
            .pipeline::<()>(&pipe)
            .await
            .map_err(unavailable)?;
        let _ = self.state.publish("jobs:new", id.as_str()).await;
        Ok(Submitted {
            state,
            repeated: false,
        })
    }

    /// The job `agent` already submitted with `key`, if any; else `key`
    /// is taken for `id` (on every replica at once: `SET NX`).
    async fn keyed(
        &self,
        agent: &str,
        key: &str,
        id: &JobId,
    ) -> Result<Option<JobState>, JobsRefused> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{agent}\n{key}"));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = self.state.key(&format!("jobs:idem:{hex}"));
        let taken: Option<String> = self
            .state
            .query(
                redis::cmd("SET")
                    .arg(&name)
                    .arg(id.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(UNFINISHED_TTL_MS),
            )
            .await
            .map_err(unavailable)?;
        if taken.is_some() {
            return Ok(None);
        }
        let earlier: Option<String> = self
            .state
            .query(redis::cmd("GET").arg(&name))
            .await
            .map_err(unavailable)?;
        let Some(earlier) = earlier.as_deref().and_then(JobId::parse) else {
            return Ok(None);
        };
        match self.state(&earlier).await? {
            Some(state) => Ok(Some(state)),
            // Its job is gone (expired, or never made): this one takes the key.
            None => {
                let _: Option<String> = self
                    .state
                    .query(
                        redis::cmd("SET")
                            .arg(&name)
                            .arg(id.as_str())
                            .arg("PX")
                            .arg(UNFINISHED_TTL_MS),
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(None)
            }
        }
    }

    pub(crate) async fn state(&self, id: &JobId) -> Result<Option<JobState>, JobsRefused> {
        let json: Option<String> = self
            .state
            .query(redis::cmd("HGET").arg(self.hash(id)).arg("state"))
            .await
            .map_err(unavailable)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub(crate) async fn request(&self, id: &JobId) -> Result<Option<JobRequest>, JobsRefused> {
        let (json, body): (Option<String>, Option<Vec<u8>>) = self
            .state
            .query(
                redis::cmd("HMGET")
                    .arg(self.hash(id))
                    .arg("request")
                    .arg("body"),
            )
            .await
            .map_err(unavailable)?;
        Ok(json
            .and_then(|j| serde_json::from_str::<JobRequest>(&j).ok())
            .map(|mut r| {
                r.body = Bytes::from(body.unwrap_or_default());
                r
            }))
    }

    /// The state and the chunks from `from` on, read together so the
    /// chunks are of the attempt the state names.
    pub(crate) async fn chunks(
        &self,
        id: &JobId,
        from: usize,
    ) -> Result<Option<Chunks>, JobsRefused> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HGET")
            .arg(self.hash(id))
            .arg("state")
            .cmd("LRANGE")
            .arg(self.chunk_list(id))
            .arg(from)
            .arg(-1);
        let (state, chunks): (Option<String>, Vec<Vec<u8>>) =
            self.state.pipeline(&pipe).await.map_err(unavailable)?;
        let Some(state) = state.and_then(|j| serde_json::from_str::<JobState>(&j).ok()) else {
            return Ok(None);
        };
        Ok(Some(Chunks {
            chunks: chunks.into_iter().map(Bytes::from).collect(),
            ended: state.status.is_final(),
            attempt: state.attempts,
        }))
    }

    pub(crate) async fn cancel(&self, id: &JobId) -> Result<Option<JobState>, JobsRefused> {
        let Some(state) = self.state(id).await? else {
            return Ok(None);
        };
        if state.status.is_final() {
            return Ok(Some(state));
        }
        let mut cancelled = state.clone();
        Outcome::Cancelled.apply(&mut cancelled);
        let keys = [self.hash(id), self.agent_set(&state.agent)];
        let answer: i64 = self
            .state
            .script(
                &self.scripts.cancel,
                &keys,
                &[to_json(&cancelled), self.ttl_ms(), id.to_string()],
            )
            .await
            .map_err(unavailable)?;
        match answer {
            1 => return Ok(Some(cancelled)),
            // It ended meanwhile: as it ended.
            -1 => return self.state(id).await,
            _ => {}
        }
        // Whoever runs it stops it: here at once, elsewhere on the
        // message (or, if that is missed, at its next renewal).
        self.stop_local(id);
        let _ = self.state.publish("jobs:cancel", id.as_str()).await;
        Ok(Some(state))
    }

    fn stop_local(&self, id: &JobId) {
        if let Some(running) = lock(&self.running).get(id) {
            running.cancel.send_replace(true);
        }
    }

    pub(crate) async fn waiting(&self) -> usize {
        let len: usize = self
            .state
            .query(redis::cmd("XLEN").arg(self.stream()))
            .await
            .unwrap_or(0);
        let pending: Value = self
            .state
            .query(redis::cmd("XPENDING").arg(self.stream()).arg(GROUP))
            .await
            .unwrap_or(Value::Nil);
        let pending = match pending {
            Value::Array(items) => items
                .first()
                .and_then(|v| redis::from_redis_value::<usize>(v.clone()).ok())
                .unwrap_or(0),
            _ => 0,
        };
        len.saturating_sub(pending)
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn unavailable(e: StateUnavailable) -> JobsRefused {
    JobsRefused::Unavailable(e.reason)
}
