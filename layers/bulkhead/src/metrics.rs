//! The names and meaning of the bulkhead's metrics.

/// In use over capacity, per compartment (the design's
/// `bulkhead_saturation`), 0 to 1.
pub const BULKHEAD_SATURATION: &str = "corral_bulkhead_saturation";
/// Requests running, per compartment.
pub const BULKHEAD_IN_USE: &str = "corral_bulkhead_in_use";
/// Requests refused because their compartment was full.
pub const BULKHEAD_REJECTIONS_TOTAL: &str = "corral_bulkhead_rejections_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        BULKHEAD_SATURATION,
        "Requests running over capacity, per compartment (0 to 1)."
    );
    metrics::describe_gauge!(BULKHEAD_IN_USE, "Requests running, per compartment.");
    metrics::describe_counter!(
        BULKHEAD_REJECTIONS_TOTAL,
        "Requests refused because their compartment was full."
    );
}
