//! The metrics the fleet exports.

/// Gauge, 1 while an upstream takes requests, 0 while it is drained after
/// failing; label `upstream`.
pub const UPSTREAM_HEALTHY: &str = "corral_fleet_upstream_healthy";
/// Counter of model loads Corral caused, by `upstream` and `model`: a
/// request sent where its model was not loaded.
pub const MODEL_LOADS_TOTAL: &str = "corral_fleet_model_loads_total";
/// Counter of requests moved to another upstream after theirs failed
/// before answering, by the failed `upstream`.
pub const FAILOVERS_TOTAL: &str = "corral_fleet_failovers_total";

pub(crate) fn describe() {
    metrics::describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 while the upstream takes requests, 0 while drained after failing"
    );
    metrics::describe_counter!(
        MODEL_LOADS_TOTAL,
        "Requests sent to an upstream where their model was not loaded"
    );
    metrics::describe_counter!(
        FAILOVERS_TOTAL,
        "Requests moved to another upstream after theirs failed before answering"
    );
}
