//! Without the `redis` feature a fleet is never shared: what sharing
//! would do is nothing.

use crate::fleet::{Fleet, LeaseKey};

/// What Redis said of a permit: without Redis, always granted.
pub(crate) enum Claim {
    Granted,
}

impl Claim {
    /// Never: nothing else holds permits.
    pub(crate) fn refused(&self) -> bool {
        false
    }
}

impl Fleet {
    /// Whether the fleet is shared through Redis: never, without the
    /// `redis` feature.
    pub fn is_shared(&self) -> bool {
        false
    }

    pub(crate) fn share_of(&self, capacity: usize) -> usize {
        capacity
    }

    pub(crate) async fn claim(&self, _: &LeaseKey) -> Claim {
        Claim::Granted
    }

    pub(crate) fn after_refused(&self, _: usize, _: &Claim) {}

    pub(crate) fn release_shared(&self, _: &LeaseKey) {}

    pub(crate) fn announce_down(&self, _: usize) {}

    pub(crate) fn share_capacity(&self, _: usize, _: &str, _: usize) {}

    pub(crate) fn share_switch(&self, _: usize, _: &str) {}
}
