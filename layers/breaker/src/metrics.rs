//! The names and meaning of the breaker's metrics.

/// Each breaker's state: 0 closed, 1 half open, 2 open (the design's
/// `circuit_breaker_state`).
pub const BREAKER_STATE: &str = "corral_circuit_breaker_state";
/// State changes, by breaker and the state entered.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "corral_circuit_breaker_transitions_total";
/// Requests failed fast by an open breaker.
pub const BREAKER_REJECTIONS_TOTAL: &str = "corral_circuit_breaker_rejections_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half open, 2 open."
    );
    metrics::describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        "Circuit breaker state changes, by the state entered."
    );
    metrics::describe_counter!(
        BREAKER_REJECTIONS_TOTAL,
        "Requests failed fast by an open circuit breaker."
    );
}
