//! The names and meaning of the batcher's metrics.

/// Embedding requests merged into a batch with others.
pub const BATCHED_REQUESTS_TOTAL: &str = "corral_batched_requests_total";
/// Upstream calls made for batches.
pub const BATCHES_TOTAL: &str = "corral_batches_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        BATCHED_REQUESTS_TOTAL,
        "Embedding requests merged into a batch with others."
    );
    metrics::describe_counter!(
        BATCHES_TOTAL,
        "Upstream calls made for batches of embedding requests."
    );
    // Exported at zero from the start, so alerts, ratios and dashboards
    // find them before the first event.
    metrics::counter!(BATCHES_TOTAL).absolute(0);
    metrics::counter!(BATCHED_REQUESTS_TOTAL).absolute(0);
}
