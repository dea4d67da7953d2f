//! The driver: reads the log, asks [`decide`] what is next, writes the
//! transition, then does it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use corral_core::{EventSink, NewEvent};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::decide::{decide, status, Next, SagaStatus};
use crate::log::{LogUnavailable, SagaLog};
use crate::metrics::{self, SAGAS_COMPENSATED_TOTAL, SAGAS_COMPLETED_TOTAL, SAGAS_STARTED_TOTAL};
use crate::{Saga, SagaConfig, Transition};

/// How many failed rebuilds of a saga (`resume_failed` entries) end it
/// `failed`: fewer may be a replica of another version.
pub const MAX_RESUME_FAILURES: usize = 10;

/// Why a runner could not drive a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaError {
    /// The log failed; the saga stays unfinished, and is resumed once
    /// the lease lapses.
    Log(LogUnavailable),
    /// Another runner holds the saga.
    Held,
    /// No saga has this id.
    Unknown,
    /// A saga with this id was already started.
    Exists,
    /// This runner lost its lease (it stalled past the lease's TTL):
    /// another runner may have taken the saga over.
    LeaseLost,
    /// This runner already drives `max_running` sagas.
    Full,
}

impl std::fmt::Display for SagaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SagaError::Log(e) => e.fmt(f),
            SagaError::Held => f.write_str("another runner holds the saga"),
            SagaError::Unknown => f.write_str("no saga has this id"),
            SagaError::Exists => f.write_str("a saga with this id was already started"),
            SagaError::LeaseLost => f.write_str("the runner lost its lease on the saga"),
            SagaError::Full => f.write_str("this replica runs as many sagas as it may"),
        }
    }
}

impl std::error::Error for SagaError {}

impl From<LogUnavailable> for SagaError {
    fn from(e: LogUnavailable) -> Self {
        SagaError::Log(e)
    }
}

/// Rebuilds a saga from its id and log (its `started` entry's
/// definition), or says why it cannot.
pub type Rebuild = Arc<dyn Fn(&str, &[Transition]) -> Result<Saga, String> + Send + Sync>;

/// Runs sagas against a [`SagaLog`], as `owner` of their leases.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn SagaLog>,
    events: Option<Arc<dyn EventSink>>,
    config: SagaConfig,
    owner: String,
    room: Arc<Room>,
}

/// The sagas this runner drives, at most `max_running`: each holds a
/// permit from admission (`start`, a claim) until its drive ends.
struct Room {
    permits: Arc<Semaphore>,
    admitted: Mutex<HashMap<String, OwnedSemaphorePermit>>,
}

impl Room {
    fn new(max_running: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_running)),
            admitted: Mutex::default(),
        }
    }

    /// Admits saga `id` (again: true at once); false when full.
    fn admit(&self, id: &str) -> bool {
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if admitted.contains_key(id) {
            return true;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                admitted.insert(id.to_string(), permit);
                true
            }
            Err(_) => false,
        }
    }

    fn discharge(&self, id: &str) {
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        admitted.remove(id);
    }

    fn full(&self) -> bool {
        self.permits.available_permits() == 0
    }
}

corral_core::impl_debug!(Runner { owner: inner.owner });

impl Runner {
    /// A runner writing to `log`, claiming sagas as `owner` (unique per
    /// process: a replica's id).
    pub fn new(log: Arc<dyn SagaLog>, owner: impl Into<String>, config: SagaConfig) -> Self {
        metrics::describe();
        Self {
            inner: Arc::new(Inner {
                log,
                events: None,
                room: Arc::new(Room::new(config.max_running)),
                config,
                owner: owner.into(),
            }),
        }
    }

    /// Also records each transition as a `saga` event in `events`.
    pub fn with_events(self, events: Arc<dyn EventSink>) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                log: inner.log.clone(),
                events: Some(events),
                config: inner.config.clone(),
                owner: inner.owner.clone(),
                room: inner.room.clone(),
            }),
        }
    }

    /// The log it writes.
    pub fn log(&self) -> &Arc<dyn SagaLog> {
        &self.inner.log
    }

    /// Starts `saga` and runs it to its end: `completed`, `compensated`
    /// or `failed`.
    pub async fn run(&self, saga: &Saga) -> Result<SagaStatus, SagaError> {
        self.start(saga).await?;
        self.drive(saga).await
    }

    /// Claims `saga` and writes its `started` entry; [`drive`](Self::drive)
    /// then runs it. Split so a caller can answer once the saga exists.
    pub async fn start(&self, saga: &Saga) -> Result<(), SagaError> {
        if !self.inner.room.admit(saga.id()) {
            return Err(SagaError::Full);
        }
        let started = self.start_admitted(saga).await;
        if started.is_err() {
            self.inner.room.discharge(saga.id());
        }
        started
    }

    async fn start_admitted(&self, saga: &Saga) -> Result<(), SagaError> {
        let inner = &self.inner;
        if !inner
            .log
            .claim(saga.id(), &inner.owner, inner.config.lease_ttl)
            .await?
        {
            return Err(SagaError::Held);
        }
        if !inner.log.read(saga.id()).await?.is_empty() {
            self.release(saga).await;
            return Err(SagaError::Exists);
        }
        let started = Transition::Started {
            steps: saga.step_names(),
            agent: saga.agent.clone(),
            definition: saga.definition.clone(),
            authenticated: saga.authenticated,
        };
        self.record(saga, &started).await?;
        ::metrics::counter!(SAGAS_STARTED_TOTAL).increment(1);
        Ok(())
    }

    /// Takes `saga` over from its log (after a crash, or from a runner
    /// that stopped) and runs it to its end.
    pub async fn resume(&self, saga: &Saga) -> Result<SagaStatus, SagaError> {
        let inner = &self.inner;
        if !inner.room.admit(saga.id()) {
            return Err(SagaError::Full);
        }
        let claimed = inner
            .log
            .claim(saga.id(), &inner.owner, inner.config.lease_ttl)
            .await;
        if claimed != Ok(true) {
            inner.room.discharge(saga.id());
            return Err(claimed.err().map_or(SagaError::Held, SagaError::Log));
        }
        match inner.log.read(saga.id()).await {
            Ok(log) if !log.is_empty() => self.drive(saga).await,
            read => {
                self.release(saga).await;
                inner.room.discharge(saga.id());
                Err(read.err().map_or(SagaError::Unknown, SagaError::Log))
            }
        }
    }

    /// Runs `saga`, whose lease this runner holds, to its end, then
    /// releases it.
    pub async fn drive(&self, saga: &Saga) -> Result<SagaStatus, SagaError> {
        let room = &self.inner.room;
        if !room.admit(saga.id()) {
            self.release(saga).await;
            return Err(SagaError::Full);
        }
        let result = self.drive_held(saga).await;
        if !matches!(result, Err(SagaError::LeaseLost)) {
            self.release(saga).await;
        }
        room.discharge(saga.id());
        result
    }

    async fn drive_held(&self, saga: &Saga) -> Result<SagaStatus, SagaError> {
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

    async fn stuck(
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

    /// Appends `transition` while this runner holds the saga's lease,
    /// then tells the event log.
    async fn record(&self, saga: &Saga, transition: &Transition) -> Result<(), SagaError> {
        let inner = &self.inner;
        if !inner
            .log
            .append_held(saga.id(), &inner.owner, transition)
            .await?
        {
            return Err(SagaError::LeaseLost);
        }
        tracing::debug!(saga = saga.id(), transition = transition.name(), step = ?transition.step(), "saga transition");
        if let Some(events) = &inner.events {
            events.record(event(saga, transition));
        }
        Ok(())
    }

    async fn release(&self, saga: &Saga) {
        let inner = &self.inner;
        if let Err(error) = inner.log.release(saga.id(), &inner.owner).await {
            tracing::debug!(saga = saga.id(), %error, "saga lease not released; it lapses");
        }
    }
}

/// The `saga` event for `transition`: ids, names and reasons, never the
/// definition nor the outputs.
fn event(saga: &Saga, transition: &Transition) -> NewEvent {
    let step = transition.step();
    let mut data = json!({"saga": saga.id(), "transition": transition.name()});
    if let Some(i) = step {
        data["step"] = json!(i);
        data["name"] = json!(saga.steps.get(i).map(|s| &*s.name));
    }
    if let Transition::StepFailed { reason, .. }
    | Transition::Cancelled { reason }
    | Transition::ResumeFailed { reason }
    | Transition::Failed { reason, .. } = transition
    {
        data["reason"] = json!(reason);
    }
    let mut event = NewEvent::new("saga", data);
    event.agent = saga.agent.clone();
    event.request_id = Some(saga.id().to_string());
    event
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

impl Runner {
    /// Asks saga `id` to stop and compensate what it did: its status
    /// after the request (`None`: no such saga). A saga already over is
    /// left as it is; a step running now ends first.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Option<SagaStatus>, SagaError> {
        let log = self.inner.log.read(id).await?;
        if log.is_empty() {
            return Ok(None);
        }
        let now = status(&log);
        if now != SagaStatus::Running {
            return Ok(Some(now));
        }
        let cancelled = Transition::Cancelled {
            reason: reason.to_string(),
        };
        // Conditional: the saga may have ended (or its log expired) since
        // it was read; a cancellation must not land after its end.
        if self.inner.log.append_open(id, &cancelled).await? {
            return Ok(Some(SagaStatus::Compensating));
        }
        let log = self.inner.log.read(id).await?;
        Ok((!log.is_empty()).then(|| status(&log)))
    }

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
