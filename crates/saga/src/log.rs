//! Where transitions are written before they take effect, and who holds
//! each saga.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::Transition;

/// A boxed future that can cross threads.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The log could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogUnavailable {
    reason: String,
}

impl LogUnavailable {
    /// The log failed for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for LogUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the saga log is unavailable: {}", self.reason)
    }
}

impl std::error::Error for LogUnavailable {}

/// A saga log's answer.
pub type LogResult<T> = Result<T, LogUnavailable>;

/// Where sagas' transitions are kept, and the leases that let one runner
/// at a time drive a saga.
///
/// `append` returns once the entry is durable: the runner acts only after
/// it did. A lease is a claim by `owner` that lapses `ttl` after its last
/// renewal unless released, so another runner can take a saga over when
/// its owner stops.
pub trait SagaLog: Send + Sync + 'static {
    /// Appends `transition` to saga `id`'s log.
    fn append<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<()>>;

    /// Appends `transition` for the runner `owner`, only while it holds
    /// saga `id`'s lease (checked and appended in one step): `false`, and
    /// nothing appended, when it lost it. A runner cut off long enough for
    /// another to take over must not write into the new owner's log.
    fn append_held<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>>;

    /// Appends `transition` only if saga `id` exists and is not over:
    /// `false`, and nothing appended, otherwise (a cancellation must not
    /// land after the end, nor recreate an expired log).
    fn append_open<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>>;

    /// Saga `id`'s log, oldest first (empty when unknown).
    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, LogResult<Vec<Transition>>>;

    /// The sagas started and not yet over.
    fn unfinished(&self) -> BoxFuture<'_, LogResult<Vec<String>>>;

    /// Claims saga `id` for `owner` for `ttl`, if nobody holds it.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>>;

    /// Extends `owner`'s claim for `ttl`; false if it no longer holds it.
    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>>;

    /// Gives up `owner`'s claim, if it still holds it.
    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, LogResult<()>>;
}

/// A log in this process's memory: sagas survive nothing, but a runner
/// dropped mid-way can be resumed from it (and tests use it).
///
/// ```
/// use std::time::Duration;
/// use corral_saga::{MemoryLog, SagaLog, Transition};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let log = MemoryLog::new();
/// log.append("s1", &Transition::Completed).await.unwrap();
/// assert_eq!(log.read("s1").await.unwrap(), [Transition::Completed]);
/// assert!(log.claim("s1", "a", Duration::from_secs(1)).await.unwrap());
/// assert!(!log.claim("s1", "b", Duration::from_secs(1)).await.unwrap());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryLog {
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    logs: HashMap<String, Vec<Transition>>,
    unfinished: BTreeSet<String>,
    leases: HashMap<String, (String, Instant)>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Memory {
    fn push(&mut self, id: &str, transition: &Transition) {
        if matches!(transition, Transition::Started { .. }) {
            self.unfinished.insert(id.to_string());
        }
        if transition.is_terminal() {
            self.unfinished.remove(id);
        }
        self.logs
            .entry(id.to_string())
            .or_default()
            .push(transition.clone());
    }

    fn holder(&self, id: &str) -> Option<&str> {
        self.leases
            .get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(owner, _)| owner.as_str())
    }
}

impl SagaLog for MemoryLog {
    fn append<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<()>> {
        self.with(|m| m.push(id, transition));
        Box::pin(async { Ok(()) })
    }

    fn append_held<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>> {
        // Checked and pushed under one lock: nobody claims in between.
        let held = self.with(|m| {
            let held = m.holder(id) == Some(owner);
            if held {
                m.push(id, transition);
            }
            held
        });
        Box::pin(async move { Ok(held) })
    }

    fn append_open<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>> {
        let open = self.with(|m| {
            let open = m.unfinished.contains(id);
            if open {
                m.push(id, transition);
            }
            open
        });
        Box::pin(async move { Ok(open) })
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, LogResult<Vec<Transition>>> {
        let log = self.with(|m| m.logs.get(id).cloned().unwrap_or_default());
        Box::pin(async { Ok(log) })
    }

    fn unfinished(&self) -> BoxFuture<'_, LogResult<Vec<String>>> {
        let ids = self.with(|m| m.unfinished.iter().cloned().collect());
        Box::pin(async { Ok(ids) })
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        let claimed = self.with(|m| {
            if m.holder(id).is_some() {
                return false;
            }
            m.leases
                .insert(id.to_string(), (owner.to_string(), Instant::now() + ttl));
            true
        });
        Box::pin(async move { Ok(claimed) })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        let renewed = self.with(|m| {
            if m.holder(id) != Some(owner) {
                return false;
            }
            m.leases
                .insert(id.to_string(), (owner.to_string(), Instant::now() + ttl));
            true
        });
        Box::pin(async move { Ok(renewed) })
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, LogResult<()>> {
        self.with(|m| {
            if m.holder(id) == Some(owner) {
                m.leases.remove(id);
            }
        });
        Box::pin(async { Ok(()) })
    }
}
