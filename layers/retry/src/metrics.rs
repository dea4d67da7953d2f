//! The names and meaning of the retry layer's metrics.

corral_core::metrics! {
    /// Retries started, by what failed (the design's `retry_count`).
    counter RETRIES_TOTAL = "corral_retries_total", "Retries started, by what failed.";
    /// Retries not started because the budget was spent.
    counter RETRY_BUDGET_EXHAUSTED_TOTAL = "corral_retry_budget_exhausted_total",
        "Retries not started because the retry budget was spent.", exported at 0;
    /// Requests sent to a fallback model, by model.
    counter FALLBACKS_TOTAL = "corral_fallbacks_total",
        "Requests sent on to a fallback model, by model.", exported at 0;
    /// Streams ended by a timeout, by kind.
    counter TIMEOUTS_TOTAL = "corral_timeouts_total",
        "Attempts and streams ended by a timeout, by kind.";
}
