//! The builders behind the registry: each reads its layer's options and
//! what it needs of the whole config, and builds the layer crate's layer.

mod admission;
mod answering;
pub(crate) mod reads;
mod resilience;

pub(crate) use admission::{auth, bulkhead, priority, ratelimit, shed};
pub(crate) use answering::{batch, cache};
pub(crate) use resilience::{breaker, degrade, retry};
