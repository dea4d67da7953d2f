//! The upstream's load, as the scheduler sees it: one truth that
//! shedding, degradation and metrics read.

use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

/// What the upstream is doing now.
///
/// ```
/// use corral_core::LoadSnapshot;
///
/// let mut load = LoadSnapshot::idle(4);
/// load.in_flight = 4;
/// load.queued[0] = 2; // two priority-1 requests wait
/// assert_eq!(load.queued_total(), 2);
/// assert!((load.utilisation() - 1.5).abs() < 1e-9, "in flight and waiting over capacity");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSnapshot {
    /// Requests the upstream may run at once.
    pub capacity: usize,
    /// Requests running now.
    pub in_flight: usize,
    /// Requests waiting, by priority: `queued[0]` is priority 1.
    pub queued: [usize; 10],
    /// Bytes of request bodies held by waiting requests.
    pub queued_bytes: usize,
    /// When the request that has waited longest started waiting.
    pub oldest_waiting_since: Option<Instant>,
    /// Requests finished per second, smoothed: the queue's drain rate.
    pub completions_per_sec: f64,
}

impl LoadSnapshot {
    /// No work, `capacity` free.
    pub fn idle(capacity: usize) -> Self {
        Self {
            capacity,
            in_flight: 0,
            queued: [0; 10],
            queued_bytes: 0,
            oldest_waiting_since: None,
            completions_per_sec: 0.0,
        }
    }

    /// Requests waiting, all priorities.
    pub fn queued_total(&self) -> usize {
        self.queued.iter().sum()
    }

    /// Requests waiting at `priority` (1..=10) or a higher one.
    pub fn queued_at_or_above(&self, priority: crate::Priority) -> usize {
        self.queued[..usize::from(priority.get())].iter().sum()
    }

    /// `(in flight + waiting) / capacity`: 1.0 is a full upstream with
    /// no queue; above 1.0 requests wait.
    pub fn utilisation(&self) -> f64 {
        if self.capacity == 0 {
            return if self.in_flight + self.queued_total() > 0 {
                f64::INFINITY
            } else {
                0.0
            };
        }
        (self.in_flight + self.queued_total()) as f64 / self.capacity as f64
    }
}

/// Something that knows the upstream's load: the scheduler.
pub trait UpstreamLoad: Send + Sync + 'static {
    /// The load now.
    fn snapshot(&self) -> LoadSnapshot;

    /// Notified whenever a waiting request leaves the queue (granted,
    /// cancelled, expired) or a permit comes back, for those who wait for
    /// room; `None` if this load never notifies.
    fn changes(&self) -> Option<&tokio::sync::Notify> {
        None
    }

    /// How long a request like `meta` (its model, priority, agent and
    /// size) would wait for a permit if it came now; `None` when the
    /// scheduler cannot tell (nothing measured yet, a queue it does not
    /// see whole).
    fn wait_estimate(&self, meta: &crate::RequestMeta) -> Option<std::time::Duration> {
        let _ = meta;
        None
    }
}

/// Where the scheduler publishes itself for the layers built around it.
///
/// The proxy makes one per stack and hands it to every layer builder: the
/// scheduler [`set`](LoadCell::set)s it when it is built, and layers above
/// it (shedding, degradation) read it per request, whatever the order in
/// which the layers were built.
///
/// ```
/// use std::sync::Arc;
/// use corral_core::{LoadCell, LoadSnapshot, UpstreamLoad};
///
/// struct Fixed;
/// impl UpstreamLoad for Fixed {
///     fn snapshot(&self) -> LoadSnapshot { LoadSnapshot::idle(4) }
/// }
///
/// let cell = LoadCell::default();
/// let reader = cell.clone();
/// assert!(reader.get().is_none());
/// cell.set(Arc::new(Fixed)).unwrap();
/// assert_eq!(reader.get().unwrap().snapshot().capacity, 4);
/// ```
#[derive(Clone, Default)]
pub struct LoadCell(Arc<OnceLock<Arc<dyn UpstreamLoad>>>);

impl LoadCell {
    /// Publishes `load`; an error if one was published already (two
    /// schedulers in one stack would be two truths).
    pub fn set(&self, load: Arc<dyn UpstreamLoad>) -> Result<(), crate::ConfigError> {
        self.0.set(load).map_err(|_| {
            crate::ConfigError::new(
                "kind",
                "a stack has one scheduler: `priority` is listed twice",
            )
        })
    }

    /// The published load, if a scheduler is in the stack.
    pub fn get(&self) -> Option<&Arc<dyn UpstreamLoad>> {
        self.0.get()
    }
}

impl std::fmt::Debug for LoadCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LoadCell")
            .field(&self.0.get().map(|l| l.snapshot()))
            .finish()
    }
}
