//! A runner's writes: each checked in Redis against its attempt, and
//! retried while its lease may still hold.

use std::time::Duration;

use bytes::Bytes;
use corral_core::{lock, StateUnavailable};
use tokio::time::Instant;

use super::{to_json, RedisJobs, GROUP, UNFINISHED_TTL_MS};
use crate::job::{Head, JobState, Outcome, Status};
use crate::store::{Claim, Renewal};

impl RedisJobs {
    /// Runs `attempt` until Redis answers, for as long as the claim's
    /// lease may still hold; `None` when it will not (or the claim is
    /// no longer this replica's).
    async fn persist<T, F, Fut>(&self, claim: &Claim, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StateUnavailable>>,
    {
        let mut wait = Duration::from_millis(50);
        loop {
            match attempt().await {
                Ok(answer) => return Some(answer),
                Err(e) if e.refused => {
                    tracing::warn!(job = %claim.id, error = %e, "Redis refused a job's write");
                    return None;
                }
                Err(e) => {
                    let renewed = lock(&self.running)
                        .get(&claim.id)
                        .filter(|j| j.attempt == claim.attempt)
                        .map(|j| j.renewed)?;
                    if renewed.elapsed() + wait >= self.config.lease {
                        tracing::warn!(job = %claim.id, error = %e, "Redis away for a whole lease: the job is left to whoever takes it over");
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.config.lease / 4);
                }
            }
        }
    }

    /// Writes the runner's state of `claim` after `change`.
    async fn write(
        &self,
        claim: &Claim,
        change: impl FnOnce(&mut JobState),
        ends: bool,
    ) -> Option<JobState> {
        let state = {
            let mut running = lock(&self.running);
            let job = running
                .get_mut(&claim.id)
                .filter(|j| j.attempt == claim.attempt)?;
            change(&mut job.state);
            job.state.clone()
        };
        let keys = [
            self.hash(&claim.id),
            self.chunk_list(&claim.id),
            self.stream(),
            self.agent_set(&claim.request.agent),
        ];
        let args = [
            claim.attempt.to_string(),
            to_json(&state),
            if ends { "1" } else { "0" }.to_string(),
            self.ttl_ms(),
            GROUP.to_string(),
            claim.id.to_string(),
        ];
        let applied: i64 = self
            .persist(claim, || {
                self.state.script(&self.scripts.update, &keys, &args)
            })
            .await?;
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
                state.truncated = false;
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
        let attempt = claim.attempt.to_string();
        let ttl = UNFINISHED_TTL_MS.to_string();
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunks.len() + 2);
        args.push(attempt.as_bytes());
        args.push(ttl.as_bytes());
        args.extend(chunks.iter().map(|c| c.as_ref()));
        let applied: Option<i64> = self
            .persist(claim, || {
                self.state.script_bytes(&self.scripts.append, &keys, &args)
            })
            .await;
        applied == Some(1)
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
        if mine {
            running.remove(&claim.id);
            drop(running);
            self.wake.notify_one();
        }
    }

    pub(crate) async fn renew(&self, claim: &Claim) -> Renewal {
        let Some((entry, renewed)) = lock(&self.running)
            .get(&claim.id)
            .filter(|j| j.attempt == claim.attempt)
            .map(|r| (r.entry.clone(), r.renewed))
        else {
            return Renewal::Lost;
        };
        let keys = [self.stream(), self.hash(&claim.id)];
        let args = [GROUP.to_string(), entry, self.state.replica().to_string()];
        let answer = self
            .state
            .script::<i64>(&self.scripts.renew, &keys, &args)
            .await;
        if matches!(answer, Ok(1 | 2)) {
            if let Some(job) = lock(&self.running)
                .get_mut(&claim.id)
                .filter(|j| j.attempt == claim.attempt)
            {
                job.renewed = Instant::now();
            }
        }
        match answer {
            Ok(1) => Renewal::Kept,
            Ok(2) => Renewal::Cancelled,
            Ok(_) => Renewal::Lost,
            // Cut off from Redis: running on is safe only while no other
            // replica can have taken it over.
            Err(_) if renewed.elapsed() >= self.config.lease => Renewal::Lost,
            Err(_) => Renewal::Kept,
        }
    }
}
