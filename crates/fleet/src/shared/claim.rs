//! Claiming a placed permit in Redis before its request is sent.

use corral_core::lock;

use super::Report;
use crate::fleet::{Fleet, LeaseKey};

/// What Redis said of a permit placed by this replica's view.
pub(crate) enum Claim {
    /// The permit is this replica's (or the fleet is not shared).
    Granted,
    /// Other replicas hold what it needs: what Redis said of the
    /// upstream, for the view to take once the permit is given back.
    Refused(Box<Report>),
    /// Redis does not answer (or refuses the script): the replica places
    /// alone, with its share.
    Unavailable,
}

impl Claim {
    /// Whether the request must wait again.
    pub(crate) fn refused(&self) -> bool {
        matches!(self, Claim::Refused(_))
    }
}

impl Fleet {
    /// Claims the permit of `slot` in Redis.
    pub(crate) async fn claim(&self, slot: &LeaseKey) -> Claim {
        let Some(shared) = self.shared.get() else {
            return Claim::Granted;
        };
        let lease = shared.lease(slot);
        if !shared.is_live() {
            // Counted as held: the next renewal after Redis is back tells
            // it about this permit.
            lock(&shared.held)[slot.upstream].insert(lease, slot.model.clone());
            return Claim::Unavailable;
        }
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
            Ok(report) => Claim::Refused(Box::new(report)),
            Err(()) => Claim::Unavailable,
        };
        guard.slot = None;
        if !claim.refused() {
            lock(&shared.held)[slot.upstream].insert(lease, slot.model.clone());
        }
        claim
    }

    /// After a refused claim's permit was given back: the view takes
    /// what Redis said again, now that the permit no longer counts here
    /// (a model this replica took as loaded, which Redis does not list,
    /// goes).
    pub(crate) fn after_refused(&self, index: usize, claim: &Claim) {
        if let Claim::Refused(report) = claim {
            self.apply(index, report);
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
