//! A permit on one upstream for one model, and what names its lease in
//! a shared fleet.

use std::sync::Arc;

/// A permit on one upstream for one model. Given back with
/// [`crate::Fleet::free`]; [`crate::Route`] does that for a request.
#[derive(Debug)]
pub struct Slot {
    pub(crate) upstream: usize,
    pub(crate) model: Arc<str>,
    /// Requests of the model on the upstream once it was granted.
    pub(crate) concurrency: usize,
    /// The model had to be loaded there for it.
    pub(crate) load: bool,
    /// The idle model evicted there for it.
    pub(crate) evict: Option<Arc<str>>,
    /// Its number in this process: its lease's name in a shared fleet.
    pub(crate) lease: u64,
}

/// Numbers of permits, unique in the process.
static LEASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What names a permit's lease in a shared fleet, and what claiming it
/// needs.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct LeaseKey {
    pub(crate) upstream: usize,
    pub(crate) model: Arc<str>,
    pub(crate) evict: Option<Arc<str>>,
    pub(crate) lease: u64,
}

impl Slot {
    /// The upstream it is on, by index.
    pub fn upstream(&self) -> usize {
        self.upstream
    }

    /// The model it runs.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Requests of its model running on its upstream once it was granted,
    /// itself included.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether its model had to be loaded on its upstream for it.
    pub fn loads(&self) -> bool {
        self.load
    }

    pub(crate) fn key(&self) -> LeaseKey {
        LeaseKey {
            upstream: self.upstream,
            model: self.model.clone(),
            evict: self.evict.clone(),
            lease: self.lease,
        }
    }

    /// A new permit's number.
    pub(crate) fn next_lease() -> u64 {
        LEASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
