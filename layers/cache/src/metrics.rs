//! The names and meaning of the cache's metrics.

/// Answers served from the cache (fresh or stale).
pub const CACHE_HITS_TOTAL: &str = "corral_cache_hits_total";
/// Cacheable requests that went upstream.
pub const CACHE_MISSES_TOTAL: &str = "corral_cache_misses_total";
/// Requests joined to an identical one in flight.
pub const CACHE_COALESCED_TOTAL: &str = "corral_cache_coalesced_total";
/// Answers kept.
pub const CACHE_ENTRIES: &str = "corral_cache_entries";
/// Bytes of answers kept.
pub const CACHE_BYTES: &str = "corral_cache_bytes";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        CACHE_HITS_TOTAL,
        "Answers served from the cache, by freshness."
    );
    metrics::describe_counter!(
        CACHE_MISSES_TOTAL,
        "Cacheable requests that went to the upstream."
    );
    metrics::describe_counter!(
        CACHE_COALESCED_TOTAL,
        "Requests joined to an identical request in flight."
    );
    metrics::describe_gauge!(CACHE_ENTRIES, "Answers kept in the cache.");
    metrics::describe_gauge!(
        CACHE_BYTES,
        metrics::Unit::Bytes,
        "Bytes of answers kept in the cache."
    );
    // Exported at zero from the start, so alerts, ratios and dashboards
    // find them before the first event.
    metrics::counter!(CACHE_MISSES_TOTAL).absolute(0);
    metrics::counter!(CACHE_COALESCED_TOTAL).absolute(0);
}
