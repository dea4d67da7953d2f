//! Claiming a placed permit in Redis before its request is sent.

use std::sync::atomic::Ordering;
use std::time::Duration;

use corral_core::lock;

use crate::fleet::{Fleet, LeaseKey};

/// What Redis said of a permit placed by this replica's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The permit is this replica's (or the fleet is not shared).
    Granted,
    /// Other replicas hold what it needs: the view took Redis' state.
    Refused,
    /// Redis does not answer: the replica places alone, with its share.
    Unavailable,
}

impl Claim {
    /// Whether the request must wait again.
    pub(crate) fn refused(self) -> bool {
        self == Claim::Refused
    }
}

impl Fleet {
    /// Claims the permit of `slot` in Redis.
    pub(crate) async fn claim(&self, slot: &LeaseKey) -> Claim {
        let Some(shared) = self.shared.get() else {
            return Claim::Granted;
        };
        let lease = shared.lease(slot);
        let (capacity, max_loaded) = {
            let state = lock(&self.state);
            (
                self.capacity(&state, slot.upstream, &slot.model),
                self.specs[slot.upstream].max_loaded.unwrap_or(0),
            )
        };
        let extra = vec![
            lease.clone(),
            slot.model.to_string(),
            capacity.to_string(),
            max_loaded.to_string(),
            slot.evict.as_deref().unwrap_or_default().to_string(),
        ];
        // Dropped while Redis may have granted it: given back.
        let mut guard = Unclaimed {
            fleet: self,
            slot: Some(slot),
        };
        let claim = match self.run(slot.upstream, "claim", extra).await {
            Ok(report) if report.granted => Claim::Granted,
            Ok(_) => Claim::Refused,
            // Counted as held: the next renewal after Redis is back tells
            // it about this permit.
            Err(()) => Claim::Unavailable,
        };
        guard.slot = None;
        if claim == Claim::Refused {
            shared.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.refused.store(0, Ordering::Relaxed);
            lock(&shared.held)[slot.upstream].insert(lease, slot.model.clone());
        }
        claim
    }

    /// How long a request refused by Redis waits before it is placed
    /// again: nothing the first times (its view now agrees with Redis),
    /// then a little more each time, up to half a second.
    pub(crate) fn refused_pause(&self) -> Duration {
        let refused = self
            .shared
            .get()
            .map_or(0, |s| s.refused.load(Ordering::Relaxed));
        match refused {
            0..=2 => Duration::ZERO,
            n => Duration::from_millis(u64::from(n.min(50)) * 10),
        }
    }
}

/// A claim abandoned before Redis answered: the lease it may have taken
/// is given back at once rather than held until its TTL.
struct Unclaimed<'a> {
    fleet: &'a Fleet,
    slot: Option<&'a LeaseKey>,
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let Some(shared) = self.fleet.shared.get() else {
            return;
        };
        lock(&shared.held)[slot.upstream].insert(shared.lease(slot), slot.model.clone());
        self.fleet.release_shared(slot);
    }
}
