//! The hash map the scheduler keeps its state in.

/// A `HashMap` hashed with foldhash, seeded at random per map (the
/// crate's docs say why not SipHash).
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
