//! The names and meaning of the scheduler's metrics.

/// Reserved permits lent to a request of a lower priority predicted to
/// give them back within `lend_within`, per pool.
pub const RESERVE_LENT_TOTAL: &str = "corral_priority_reserve_lent_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        RESERVE_LENT_TOTAL,
        "Reserved upstream permits lent to a lower priority predicted to give them back within lend_within, per pool."
    );
}
