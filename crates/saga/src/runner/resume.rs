//! Resuming the sagas whose runner stopped: claiming them, rebuilding
//! them from their log, failing those that cannot be rebuilt
//! [`MAX_RESUME_FAILURES`] times, and the resumer looking for them
//! every `resume_interval`.

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::{Rebuild, Runner, SagaError};
use crate::metrics;
use crate::{Saga, Transition};

/// How many failed rebuilds of a saga (`resume_failed` entries) end it
/// `failed`: fewer may be a replica of another version.
pub const MAX_RESUME_FAILURES: usize = 10;

impl Runner {
    /// Claims each unfinished saga nobody holds (its owner died or
    /// stopped), rebuilds it with `rebuild` and drives it in a task of
    /// its own. A saga that cannot be claimed, read or rebuilt is skipped
    /// (and counted: `corral_coordination_failures_total{reason="resume"}`)
    /// for the next pass; one that failed to rebuild
    /// [`MAX_RESUME_FAILURES`] times ends `failed`. Returns how many it
    /// took.
    pub async fn resume_unfinished(&self, rebuild: &Rebuild) -> Result<usize, SagaError> {
        let mut taken = 0;
        for id in self.inner.log.unfinished().await? {
            if self.inner.room.full() {
                break; // the rest waits for room, here or on another replica
            }
            match self.resume_one(&id, rebuild).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(error) => {
                    metrics::failure("resume");
                    tracing::warn!(saga = %id, %error, "saga not resumed; tried again later");
                    self.release(&Saga::new(id.as_str())).await;
                }
            }
        }
        Ok(taken)
    }

    /// Claims, rebuilds and drives saga `id`: whether it was taken.
    async fn resume_one(&self, id: &str, rebuild: &Rebuild) -> Result<bool, SagaError> {
        let room = &self.inner.room;
        if !room.admit(id) {
            return Ok(false);
        }
        let taken = self.claim_and_spawn(id, rebuild).await;
        if taken != Ok(true) {
            room.discharge(id);
        }
        taken
    }

    /// Claims saga `id` (admitted), rebuilds it and drives it in a task.
    async fn claim_and_spawn(&self, id: &str, rebuild: &Rebuild) -> Result<bool, SagaError> {
        let inner = &self.inner;
        if !inner
            .log
            .claim(id, &inner.owner, inner.config.lease_ttl)
            .await?
        {
            return Ok(false);
        }
        let log = inner.log.read(id).await?;
        let saga = match rebuild(id, &log) {
            Ok(saga) => saga,
            Err(reason) => {
                let unbuilt = Saga::new(id);
                self.resume_failed(&unbuilt, &log, reason).await?;
                self.release(&unbuilt).await;
                return Ok(false);
            }
        };
        tracing::info!(saga = %id, owner = %inner.owner, "resuming a saga whose runner stopped");
        let runner = self.clone();
        tokio::spawn(async move {
            if let Err(error) = runner.drive(&saga).await {
                tracing::warn!(saga = saga.id(), %error, "saga interrupted; it will be resumed");
            }
        });
        Ok(true)
    }

    /// Logs a failed rebuild: the saga stays unfinished (a replica that
    /// can read it, say after an upgrade, resumes it), until the
    /// [`MAX_RESUME_FAILURES`]th, which ends it `failed`.
    async fn resume_failed(
        &self,
        saga: &Saga,
        log: &[Transition],
        reason: String,
    ) -> Result<(), SagaError> {
        metrics::failure("resume");
        let before = log
            .iter()
            .filter(|t| matches!(t, Transition::ResumeFailed { .. }))
            .count();
        if before + 1 >= MAX_RESUME_FAILURES {
            let reason = format!("cannot be resumed ({} tries): {reason}", before + 1);
            return self.stuck(saga, None, reason).await;
        }
        tracing::warn!(saga = saga.id(), %reason, "saga cannot be rebuilt; tried again later");
        self.record(saga, &Transition::ResumeFailed { reason })
            .await
    }

    /// Every `resume_interval`, [`resume_unfinished`](Self::resume_unfinished).
    pub fn spawn_resumer(&self, rebuild: Rebuild) -> tokio::task::JoinHandle<()> {
        let runner = self.clone();
        tokio::spawn(async move {
            let period = runner.inner.config.resume_interval;
            let mut every = interval_at(Instant::now() + period, period);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(error) = runner.resume_unfinished(&rebuild).await {
                    tracing::debug!(%error, "could not look for sagas to resume");
                }
            }
        })
    }
}
