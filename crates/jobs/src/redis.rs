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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_core::{lock, RedisState, StateUnavailable};
use redis::Value;
use tokio::sync::{mpsc, watch, Notify};

use crate::job::{Chunks, Head, JobId, JobRequest, JobState, Outcome, Status};
use crate::store::{Claim, JobsRefused};
use crate::JobsConfig;

const GROUP: &str = "runners";
/// A job not ended after this long is dropped from Redis anyway: nothing
/// stays forever if every replica is gone.
const UNFINISHED_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Claims abandoned entries, then reads new ones: a flat list of
/// `entry id, job id` pairs.
const CLAIM: &str = r"
local out = {}
local ok, res = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
if ok then
  for _, e in ipairs(res[2]) do
    if e[2] then table.insert(out, e[1]); table.insert(out, e[2][2]) end
  end
end
local room = tonumber(ARGV[4]) - #out / 2
if room > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      if e[2] then table.insert(out, e[1]); table.insert(out, e[2][2]) end
    end
  end
end
return out
";

/// Starts a claimed job's next attempt, or drops its entry when the job
/// has ended, was cancelled before it ran, or is gone: `{attempt, state,
/// request, body}` or nil.
const PREPARE: &str = r"
local st = redis.call('HGET', KEYS[1], 'state')
if (not st) or redis.call('HGET', KEYS[1], 'final') == '1' or redis.call('HGET', KEYS[1], 'cancel') == '1' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[3], ARGV[1])
  return false
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'entry', ARGV[1])
redis.call('DEL', KEYS[2])
return {attempt, st, redis.call('HGET', KEYS[1], 'request'), redis.call('HGET', KEYS[1], 'body')}
";

/// A runner's write of the state: only while the attempt is its own and
/// the job has not ended. `ARGV[3]` = `1` ends it (acknowledged, expiring).
const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'final') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'final', '1')
  local entry = redis.call('HGET', KEYS[1], 'entry')
  if entry then
    redis.call('XACK', KEYS[3], ARGV[5], entry)
    redis.call('XDEL', KEYS[3], entry)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
";

/// A runner's chunks: only while the attempt is its own.
const APPEND: &str = r"
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'final') == '1' then
  return 0
end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], 604800000)
return 1
";

/// Renews this replica's claim on an entry, if it still owns it.
const RENEW: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p[1] and p[1][2] == ARGV[3] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
  return 1
end
return 0
";

/// Cancels a job: ended at once when no runner ever started it (`1`),
/// else flagged for its runner (`0`); `-1` when it had ended or is gone.
const CANCEL: &str = r"
if not redis.call('HGET', KEYS[1], 'state') or redis.call('HGET', KEYS[1], 'final') == '1' then
  return -1
end
redis.call('HSET', KEYS[1], 'cancel', '1')
local attempt = redis.call('HGET', KEYS[1], 'attempt')
if attempt == '0' then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'final', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// A job this replica runs.
struct Running {
    attempt: u32,
    state: JobState,
    entry: String,
    cancel: watch::Sender<bool>,
}

/// The Redis backend.
pub(crate) struct RedisJobs {
    state: RedisState,
    config: JobsConfig,
    scripts: Scripts,
    running: Mutex<HashMap<JobId, Running>>,
    count: AtomicUsize,
    wake: Notify,
}

struct Scripts {
    claim: redis::Script,
    prepare: redis::Script,
    update: redis::Script,
    append: redis::Script,
    renew: redis::Script,
    cancel: redis::Script,
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
            scripts: Scripts {
                claim: redis::Script::new(CLAIM),
                prepare: redis::Script::new(PREPARE),
                update: redis::Script::new(UPDATE),
                append: redis::Script::new(APPEND),
                renew: redis::Script::new(RENEW),
                cancel: redis::Script::new(CANCEL),
            },
            running: Mutex::default(),
            count: AtomicUsize::new(0),
            wake: Notify::new(),
        });
        tokio::spawn(claim_loop(jobs.clone(), claims));
        tokio::spawn(listen(jobs.clone()));
        (jobs, receiver)
    }

    pub(crate) fn lease(&self) -> std::time::Duration {
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

    fn ttl_ms(&self) -> String {
        self.config.result_ttl.as_millis().to_string()
    }

    pub(crate) async fn submit(&self, request: JobRequest) -> Result<JobState, JobsRefused> {
        let held: usize = self
            .state
            .query(redis::cmd("XLEN").arg(self.stream()))
            .await
            .map_err(unavailable)?;
        if held >= self.config.max_jobs {
            return Err(JobsRefused::Full { held });
        }
        let id = JobId::generate();
        let state = JobState::queued(id.clone(), &request);
        let mut pipe = redis::pipe();
        pipe.atomic()
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
        Ok(state)
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

    pub(crate) async fn chunks(
        &self,
        id: &JobId,
        from: usize,
    ) -> Result<Option<Chunks>, JobsRefused> {
        let Some(state) = self.state(id).await? else {
            return Ok(None);
        };
        let chunks: Vec<Vec<u8>> = self
            .state
            .query(
                redis::cmd("LRANGE")
                    .arg(self.chunk_list(id))
                    .arg(from)
                    .arg(-1),
            )
            .await
            .map_err(unavailable)?;
        Ok(Some(Chunks {
            chunks: chunks.into_iter().map(Bytes::from).collect(),
            ended: state.status.is_final(),
        }))
    }

    pub(crate) async fn cancel(&self, id: &JobId) -> Result<Option<JobState>, JobsRefused> {
        let Some(mut state) = self.state(id).await? else {
            return Ok(None);
        };
        if state.status.is_final() {
            return Ok(Some(state));
        }
        let mut cancelled = state.clone();
        Outcome::Cancelled.apply(&mut cancelled);
        let keys = [self.hash(id)];
        let answer: i64 = self
            .state
            .script(
                &self.scripts.cancel,
                &keys,
                &[to_json(&cancelled), self.ttl_ms()],
            )
            .await
            .map_err(unavailable)?;
        if answer == 1 {
            state = cancelled;
        }
        // Whoever runs it stops it; here at once, elsewhere on the message.
        self.stop_local(id);
        let _ = self.state.publish("jobs:cancel", id.as_str()).await;
        Ok(Some(state))
    }

    fn stop_local(&self, id: &JobId) {
        if let Some(running) = lock(&self.running).get(id) {
            running.cancel.send_replace(true);
        }
    }

    /// Writes the runner's state of `claim` after `change`.
    async fn write(
        &self,
        claim: &Claim,
        change: impl FnOnce(&mut JobState),
        ends: bool,
    ) -> Option<JobState> {
        let (state, _entry) = {
            let mut running = lock(&self.running);
            let job = running
                .get_mut(&claim.id)
                .filter(|j| j.attempt == claim.attempt)?;
            change(&mut job.state);
            (job.state.clone(), job.entry.clone())
        };
        let keys = [
            self.hash(&claim.id),
            self.chunk_list(&claim.id),
            self.stream(),
        ];
        let args = [
            claim.attempt.to_string(),
            to_json(&state),
            if ends { "1" } else { "0" }.to_string(),
            self.ttl_ms(),
            GROUP.to_string(),
        ];
        let applied: i64 = self
            .state
            .script(&self.scripts.update, &keys, &args)
            .await
            .ok()?;
        (applied == 1).then_some(state)
    }

    pub(crate) async fn started(&self, claim: &Claim) -> bool {
        let replica = self.state.replica().to_string();
        self.write(
            claim,
            |state| {
                state.status = Status::Queued;
                state.attempts = claim.attempt;
                state.started_at = Some(corral_core::unix_now_f64());
                state.replica = Some(replica);
                state.response = None;
                state.bytes = 0;
            },
            false,
        )
        .await
        .is_some()
    }

    pub(crate) async fn dispatched(&self, claim: &Claim) -> bool {
        self.write(claim, |state| state.status = Status::Running, false)
            .await
            .is_some()
    }

    pub(crate) async fn head(&self, claim: &Claim, head: Head) -> bool {
        self.write(claim, |state| state.response = Some(head), false)
            .await
            .is_some()
    }

    pub(crate) async fn append(&self, claim: &Claim, chunks: Vec<Bytes>) -> bool {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        {
            let mut running = lock(&self.running);
            let Some(job) = running
                .get_mut(&claim.id)
                .filter(|j| j.attempt == claim.attempt)
            else {
                return false;
            };
            if job.state.bytes + size > self.config.max_result_bytes as u64 {
                job.state.truncated = true;
                return false;
            }
            job.state.bytes += size;
        }
        let keys = [self.hash(&claim.id), self.chunk_list(&claim.id)];
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunks.len() + 1);
        let attempt = claim.attempt.to_string();
        args.push(attempt.as_bytes());
        args.extend(chunks.iter().map(|c| c.as_ref()));
        let applied: Result<i64, StateUnavailable> = self
            .state
            .script_bytes(&self.scripts.append, &keys, &args)
            .await;
        matches!(applied, Ok(1))
    }

    pub(crate) async fn finish(&self, claim: &Claim, outcome: &Outcome) -> Option<JobState> {
        let ended = self.write(claim, |state| outcome.apply(state), true).await;
        self.abandon(claim);
        ended
    }

    /// Stops tracking `claim` here, making room for another.
    pub(crate) fn abandon(&self, claim: &Claim) {
        let mut running = lock(&self.running);
        let mine = running
            .get(&claim.id)
            .is_some_and(|j| j.attempt == claim.attempt);
        if mine && running.remove(&claim.id).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    pub(crate) async fn renew(&self, claim: &Claim) -> bool {
        let Some(entry) = lock(&self.running)
            .get(&claim.id)
            .filter(|j| j.attempt == claim.attempt)
            .map(|r| r.entry.clone())
        else {
            return false;
        };
        let keys = [self.stream()];
        let args = [GROUP.to_string(), entry, self.state.replica().to_string()];
        match self
            .state
            .script::<i64>(&self.scripts.renew, &keys, &args)
            .await
        {
            Ok(1) => true,
            Ok(_) => false,
            // Redis away: keep running; if the lease runs out meanwhile,
            // the next renewal tells.
            Err(_) => true,
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

    /// The group, made if missing (the first replica, or after a flush).
    async fn ensure_group(&self) {
        let _ = self
            .state
            .query::<Value>(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.stream())
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
    }

    /// Claims what there is room for; the claims ready to run.
    async fn claim(&self) -> Result<Vec<Claim>, StateUnavailable> {
        let room = self
            .config
            .max_running
            .saturating_sub(self.count.load(Ordering::Acquire));
        if room == 0 {
            return Ok(Vec::new());
        }
        let keys = [self.stream()];
        let args = [
            GROUP.to_string(),
            self.state.replica().to_string(),
            self.config.lease.as_millis().to_string(),
            room.min(64).to_string(),
        ];
        let pairs: Vec<String> = match self.state.script(&self.scripts.claim, &keys, &args).await {
            Ok(pairs) => pairs,
            Err(e) if e.reason.contains("NOGROUP") => {
                self.ensure_group().await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut claims = Vec::new();
        for pair in pairs.chunks(2) {
            let [entry, id] = pair else { continue };
            let Some(id) = JobId::parse(id) else { continue };
            if let Some(claim) = self.prepare(entry, id).await? {
                claims.push(claim);
            }
        }
        Ok(claims)
    }

    async fn prepare(&self, entry: &str, id: JobId) -> Result<Option<Claim>, StateUnavailable> {
        let keys = [self.hash(&id), self.chunk_list(&id), self.stream()];
        let args = [entry.to_string(), GROUP.to_string()];
        let prepared: Option<(u32, String, String, Vec<u8>)> = self
            .state
            .script(&self.scripts.prepare, &keys, &args)
            .await?;
        let Some((attempt, state, request, body)) = prepared else {
            return Ok(None);
        };
        let (Ok(state), Ok(mut request)) = (
            serde_json::from_str::<JobState>(&state),
            serde_json::from_str::<JobRequest>(&request),
        ) else {
            tracing::warn!(job = %id, "a job in Redis cannot be read: skipped");
            return Ok(None);
        };
        request.body = Bytes::from(body);
        let (cancel, cancelled) = watch::channel(false);
        lock(&self.running).insert(
            id.clone(),
            Running {
                attempt,
                state,
                entry: entry.to_string(),
                cancel,
            },
        );
        self.count.fetch_add(1, Ordering::AcqRel);
        if attempt > 1 {
            tracing::info!(job = %id, attempt, "taking over a job whose replica stopped renewing it: running it again from the start");
        }
        Ok(Some(Claim {
            id,
            request,
            attempt,
            cancelled,
        }))
    }
}

/// Claims jobs while anyone holds the claims' receiver: at each
/// submission anywhere, when a job here ends, and every poll interval.
async fn claim_loop(jobs: Arc<RedisJobs>, claims: mpsc::Sender<Claim>) {
    jobs.ensure_group().await;
    loop {
        match jobs.claim().await {
            Ok(found) => {
                let full = !found.is_empty();
                for claim in found {
                    if claims.send(claim).await.is_err() {
                        return;
                    }
                }
                if full {
                    // There may be more: look again at once.
                    continue;
                }
            }
            Err(e) => tracing::debug!(error = %e, "claiming jobs: Redis does not answer"),
        }
        if claims.is_closed() {
            return;
        }
        tokio::select! {
            () = jobs.wake.notified() => {}
            () = tokio::time::sleep(jobs.config.poll_interval) => {}
        }
    }
}

/// Wakes the claimer at each submission, and stops the jobs cancelled on
/// other replicas that run here.
async fn listen(jobs: Arc<RedisJobs>) {
    // One receiver has every channel this replica subscribed to.
    let mut messages = jobs.state.subscribe("jobs:new").await;
    drop(jobs.state.subscribe("jobs:cancel").await);
    loop {
        match messages.recv().await {
            Ok(m) if m.channel == "jobs:new" => jobs.wake.notify_one(),
            Ok(m) if m.channel == "jobs:cancel" => {
                if let Some(id) = JobId::parse(&m.payload) {
                    jobs.stop_local(&id);
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => jobs.wake.notify_one(),
            Err(_) => return,
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn unavailable(e: StateUnavailable) -> JobsRefused {
    JobsRefused::Unavailable(e.reason)
}
