//! The names and meaning of the cache's metrics.

corral_core::metrics! {
    /// Answers served from the cache (fresh or stale).
    counter CACHE_HITS_TOTAL = "corral_cache_hits_total",
        "Answers served from the cache, by freshness.";
    /// Cacheable requests that went upstream.
    counter CACHE_MISSES_TOTAL = "corral_cache_misses_total",
        "Cacheable requests that went to the upstream.", exported at 0;
    /// Requests joined to an identical one in flight.
    counter CACHE_COALESCED_TOTAL = "corral_cache_coalesced_total",
        "Requests joined to an identical request in flight.", exported at 0;
    /// Answers kept.
    gauge CACHE_ENTRIES = "corral_cache_entries", "Answers kept in the cache.";
    /// Bytes of answers kept.
    gauge(Bytes) CACHE_BYTES = "corral_cache_bytes", "Bytes of answers kept in the cache.";
}
