//! The hash map the scheduler keeps its state in.

/// A `HashMap` hashed with foldhash, seeded at random per map, for keys
/// Corral makes itself; never for keys a client chooses (the crate's
/// docs, "Cost", say why).
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
