//! The names and meaning of the degrade layer's metrics.

/// The level in force: 0 Normal, 1 L1, 2 L2, 3 Critical.
pub const DEGRADATION_LEVEL: &str = "corral_degradation_level";
/// The smoothed load behind it, 0 to 1, at the last change.
pub const DEGRADATION_LOAD: &str = "corral_degradation_load";
/// Requests changed by degradation, by what was done.
pub const DEGRADED_REQUESTS_TOTAL: &str = "corral_degraded_requests_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        DEGRADATION_LEVEL,
        "Degradation level in force: 0 Normal, 1 L1, 2 L2, 3 Critical."
    );
    metrics::describe_gauge!(
        DEGRADATION_LOAD,
        "Smoothed load (0 to 1) at the last level change."
    );
    metrics::describe_counter!(
        DEGRADED_REQUESTS_TOTAL,
        "Requests changed by degradation: capped, rewritten, refused, defaulted."
    );
}
