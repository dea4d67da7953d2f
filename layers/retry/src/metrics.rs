//! The names and meaning of the retry layer's metrics.

/// Retries started, by what failed (the design's `retry_count`).
pub const RETRIES_TOTAL: &str = "corral_retries_total";
/// Retries not started because the budget was spent.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "corral_retry_budget_exhausted_total";
/// Requests sent to a fallback model, by model.
pub const FALLBACKS_TOTAL: &str = "corral_fallbacks_total";
/// Streams ended by a timeout, by kind.
pub const TIMEOUTS_TOTAL: &str = "corral_timeouts_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(RETRIES_TOTAL, "Retries started, by what failed.");
    metrics::describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries not started because the retry budget was spent."
    );
    metrics::describe_counter!(
        FALLBACKS_TOTAL,
        "Requests sent on to a fallback model, by model."
    );
    metrics::describe_counter!(
        TIMEOUTS_TOTAL,
        "Attempts and streams ended by a timeout, by kind."
    );
    // Exported at zero from the start, so alerts, ratios and dashboards
    // find them before the first event.
    metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).absolute(0);
    metrics::counter!(FALLBACKS_TOTAL).absolute(0);
}
