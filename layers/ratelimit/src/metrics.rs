//! The names and meaning of the rate limiter's metrics.

/// Requests refused by a rate limit, by class and quota.
pub const RATE_LIMITED_TOTAL: &str = "corral_rate_limited_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by a rate limit, by class and quota."
    );
}
