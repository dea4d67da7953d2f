//! Driving a saga whose lease the runner holds: the loop asking
//! [`decide`] what is next, a step's action (its target picked and
//! logged first), the compensations with their retries, and the
//! renewal of the lease while a call runs.

use std::future::Future;

use serde_json::Value;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::{Runner, SagaError};
use crate::decide::{decide, Next, SagaStatus};
use crate::metrics::{self, SAGAS_COMPENSATED_TOTAL, SAGAS_COMPLETED_TOTAL};
use crate::{Saga, Transition};

impl Runner {
    pub(super) async fn drive_held(&self, saga: &Saga) -> Result<SagaStatus, SagaError> {
        let inner = &self.inner;
        loop {
            if !inner
                .log
                .renew(saga.id(), &inner.owner, inner.config.lease_ttl)
                .await?
            {
                return Err(SagaError::LeaseLost);
            }
            let log = inner.log.read(saga.id()).await?;
            match decide(&log, saga.len()) {
                Next::Run(i) => self.run_step(saga, i, &log).await?,
                Next::Compensate(j) => {
                    let (target, output) = (target_of(&log, j), output_of(&log, j));
                    self.compensate(saga, j, target, output).await?;
                }
                Next::Complete => {
                    self.record(saga, &Transition::Completed).await?;
                    ::metrics::counter!(SAGAS_COMPLETED_TOTAL).increment(1);
                }
                Next::FinishCompensation => {
                    self.record(saga, &Transition::CompensatedAll).await?;
                    ::metrics::counter!(SAGAS_COMPENSATED_TOTAL).increment(1);
                }
                Next::Over(status) => return Ok(status),
            }
        }
    }

    async fn run_step(&self, saga: &Saga, i: usize, log: &[Transition]) -> Result<(), SagaError> {
        let Some(step) = saga.steps.get(i) else {
            return self.stuck(saga, Some(i), "no such step".into()).await;
        };
        // The target is picked once and logged before the first attempt:
        // a re-run after a crash goes where the first attempt went.
        let target = match target_of(log, i) {
            Some(target) => Ok(Some(target)),
            None => self.holding(saga, step.action.resolve()).await?,
        };
        if let Ok(Some(target)) = &target {
            if target_of(log, i).is_none() {
                let resolved = Transition::Resolved {
                    step: i,
                    target: target.clone(),
                };
                self.record(saga, &resolved).await?;
            }
        }
        self.record(saga, &Transition::StepStarted { step: i })
            .await?;
        let outcome = match target {
            Ok(target) => {
                let context = saga.context(i, "action", target, None);
                self.holding(saga, step.action.call(context)).await?
            }
            Err(error) => Err(error),
        };
        let transition = match outcome {
            Ok(output) => Transition::StepDone { step: i, output },
            Err(error) => {
                metrics::failure("step");
                tracing::info!(saga = saga.id(), step = %step.name, %error, "saga step failed: compensating");
                Transition::StepFailed {
                    step: i,
                    reason: error.to_string(),
                }
            }
        };
        self.record(saga, &transition).await
    }

    async fn compensate(
        &self,
        saga: &Saga,
        j: usize,
        target: Option<String>,
        output: Option<Value>,
    ) -> Result<(), SagaError> {
        self.record(saga, &Transition::Compensating { step: j })
            .await?;
        let attempts = self.attempts(saga, j, target, output);
        match self.holding(saga, attempts).await? {
            Ok(()) => {
                self.record(saga, &Transition::Compensated { step: j })
                    .await
            }
            Err(reason) => self.stuck(saga, Some(j), reason).await,
        }
    }

    /// Tries step `j`'s compensation up to `compensation_attempts` times.
    async fn attempts(
        &self,
        saga: &Saga,
        j: usize,
        target: Option<String>,
        output: Option<Value>,
    ) -> Result<(), String> {
        let Some(compensation) = saga.steps.get(j).and_then(|s| s.compensation.clone()) else {
            return Ok(());
        };
        let config = &self.inner.config;
        let mut attempt = 1;
        loop {
            let context = saga.context(j, "compensate", target.clone(), output.clone());
            match compensation.call(context).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    metrics::failure("compensation");
                    tracing::warn!(saga = saga.id(), step = j, attempt, %error, "saga compensation failed");
                    if attempt >= config.compensation_attempts {
                        return Err(format!("compensation failed {attempt} times: {error}"));
                    }
                }
            }
            tokio::time::sleep(config.compensation_wait(attempt)).await;
            attempt += 1;
        }
    }

    pub(super) async fn stuck(
        &self,
        saga: &Saga,
        step: Option<usize>,
        reason: String,
    ) -> Result<(), SagaError> {
        metrics::failure("stuck");
        tracing::error!(saga = saga.id(), ?step, %reason, "saga failed: it needs an operator");
        self.record(saga, &Transition::Failed { step, reason })
            .await
    }

    /// Awaits `work`, renewing the lease meanwhile; fails if it was lost,
    /// or if renewals kept failing for `lease_ttl`: cut off from the log
    /// (this replica alone, maybe), it cannot tell whether another runner
    /// took the saga over, and must assume one did.
    async fn holding<F: Future>(&self, saga: &Saga, work: F) -> Result<F::Output, SagaError> {
        let inner = &self.inner;
        let ttl = inner.config.lease_ttl;
        let period = ttl / 3;
        let mut renewals = interval_at(Instant::now() + period, period);
        renewals.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renewed_at = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = renewals.tick() => {
                    match inner.log.renew(saga.id(), &inner.owner, ttl).await {
                        Ok(true) => renewed_at = Instant::now(),
                        Ok(false) => return Err(SagaError::LeaseLost),
                        Err(error) if renewed_at.elapsed() >= ttl => {
                            tracing::warn!(saga = saga.id(), %error, "saga lease not renewed for its whole ttl: stopping");
                            return Err(SagaError::LeaseLost);
                        }
                        Err(error) => {
                            tracing::debug!(saga = saga.id(), %error, "saga lease renewal failed; retrying");
                        }
                    }
                }
            }
        }
    }
}

/// Where step `j`'s call was sent, if a target was picked and logged.
fn target_of(log: &[Transition], j: usize) -> Option<String> {
    log.iter().find_map(|t| match t {
        Transition::Resolved { step, target } if *step == j => Some(target.clone()),
        _ => None,
    })
}

/// What step `j`'s action returned, if that was logged.
fn output_of(log: &[Transition], j: usize) -> Option<Value> {
    log.iter().rev().find_map(|t| match t {
        Transition::StepDone { step, output } if *step == j => Some(output.clone()),
        _ => None,
    })
}
