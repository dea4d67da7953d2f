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

/// Gauge: with `capacity = "auto"`, the capacity found for a model on an
/// upstream; labels `upstream`, `model`.
pub const CAPACITY: &str = "corral_fleet_capacity";

pub(crate) fn describe() {
    metrics::describe_gauge!(
        CAPACITY,
        "Requests of a model an upstream runs at once, as found by measuring"
    );
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
