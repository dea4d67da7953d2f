//! How a replica takes jobs: new entries of the stream, and entries
//! whose replica stopped renewing them; and what it hears of others.

use std::sync::Arc;

use bytes::Bytes;
use corral_core::{lock, StateUnavailable};
use redis::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{RedisJobs, Running, GROUP};
use crate::job::{JobId, JobRequest, JobState};
use crate::store::Claim;

impl RedisJobs {
    /// The group, made if missing (the first replica, or after a flush).
    pub(super) async fn ensure_group(&self) {
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
        let running = lock(&self.running).len();
        let room = self.config.max_running.saturating_sub(running);
        if room == 0 {
            return Ok(Vec::new());
        }
        let keys = [self.stream()];
        let cursor = lock(&self.cursor).clone();
        let args = [
            GROUP.to_string(),
            self.state.replica().to_string(),
            self.config.lease.as_millis().to_string(),
            room.min(64).to_string(),
            cursor,
        ];
        let found: Vec<String> = match self.state.script(&self.scripts.claim, &keys, &args).await {
            Ok(found) => found,
            Err(e) if e.reason.contains("NOGROUP") => {
                self.ensure_group().await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let Some((next, pairs)) = found.split_first() else {
            return Ok(Vec::new());
        };
        // The scan goes on from where it stopped; `0-0` starts it over.
        *lock(&self.cursor) = next.clone();
        let mut claims = Vec::new();
        for pair in pairs.chunks(2) {
            let [entry, id] = pair else { continue };
            let Some(id) = JobId::parse(id) else {
                self.drop_entry(entry).await;
                continue;
            };
            match self.prepare(entry, id).await {
                Ok(Some(claim)) => claims.push(claim),
                Ok(None) => {}
                // Left pending: taken again after the lease.
                Err(e) => {
                    tracing::debug!(error = %e, "preparing a claimed job: Redis does not answer")
                }
            }
        }
        Ok(claims)
    }

    /// Acknowledges and deletes an entry no job can be made of.
    async fn drop_entry(&self, entry: &str) {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(self.stream())
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(self.stream())
            .arg(entry)
            .ignore();
        let _ = self.state.pipeline::<()>(&pipe).await;
    }

    async fn prepare(&self, entry: &str, id: JobId) -> Result<Option<Claim>, StateUnavailable> {
        let keys = [self.hash(&id), self.chunk_list(&id), self.stream()];
        let args = [entry.to_string(), GROUP.to_string()];
        let prepared: Option<(u32, String, String, Vec<u8>, String)> = self
            .state
            .script(&self.scripts.prepare, &keys, &args)
            .await?;
        let Some((attempt, state, request, body, cancelled)) = prepared else {
            return Ok(None);
        };
        let (Ok(state), Ok(mut request)) = (
            serde_json::from_str::<JobState>(&state),
            serde_json::from_str::<JobRequest>(&request),
        ) else {
            tracing::warn!(job = %id, "a job in Redis cannot be read: dropped");
            self.drop_entry(entry).await;
            return Ok(None);
        };
        request.body = Bytes::from(body);
        // Cancelled while its runner was gone: its runner-to-be ends it.
        let (cancel, receiver) = watch::channel(cancelled == "1");
        let replaced = lock(&self.running).insert(
            id.clone(),
            Running {
                attempt,
                state,
                entry: entry.to_string(),
                cancel,
                renewed: Instant::now(),
            },
        );
        if let Some(old) = replaced {
            // This replica took back its own job (its renewals lapsed):
            // the old attempt stops; it can no longer write anyway.
            old.cancel.send_replace(true);
        }
        if attempt > 1 {
            tracing::info!(job = %id, attempt, "taking over a job whose replica stopped renewing it: running it again from the start");
        }
        Ok(Some(Claim {
            id,
            request,
            attempt,
            cancelled: receiver,
        }))
    }
}

/// Claims jobs while anyone holds the claims' receiver: at each
/// submission anywhere, when a job here ends, and every poll interval.
pub(super) async fn claim_loop(jobs: Arc<RedisJobs>, claims: mpsc::Sender<Claim>) {
    jobs.ensure_group().await;
    loop {
        match jobs.claim().await {
            Ok(found) => {
                let more = !found.is_empty();
                for claim in found {
                    if claims.send(claim).await.is_err() {
                        return;
                    }
                }
                if more {
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
pub(super) async fn listen(jobs: Arc<RedisJobs>) {
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
            // A missed cancellation is found at the next renewal.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => jobs.wake.notify_one(),
            Err(_) => return,
        }
    }
}
