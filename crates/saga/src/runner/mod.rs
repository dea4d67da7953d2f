//! The driver: reads the log, asks [`decide`](fn@crate::decide) what is
//! next, writes the transition, then does it. Here: the [`Runner`], its
//! admission of sagas (at most `max_running`), starting, resuming,
//! driving and cancelling one saga, and the recording of transitions;
//! the drive's steps and compensations are in `drive`, the resumer of
//! unfinished sagas in `resume`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_core::{EventSink, NewEvent};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decide::{status, SagaStatus};
use crate::log::{LogUnavailable, SagaLog};
use crate::metrics::{self, SAGAS_STARTED_TOTAL};
use crate::{Saga, SagaConfig, Transition};

mod drive;
mod resume;

pub use resume::MAX_RESUME_FAILURES;

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
}
