//! The names and meaning of the breaker's metrics.

corral_core::metrics! {
    /// Each breaker's state: 0 closed, 1 half open, 2 open (the design's
    /// `circuit_breaker_state`).
    gauge BREAKER_STATE = "corral_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 half open, 2 open.";
    /// State changes, by breaker and the state entered.
    counter BREAKER_TRANSITIONS_TOTAL = "corral_circuit_breaker_transitions_total",
        "Circuit breaker state changes, by the state entered.";
    /// Requests failed fast by an open breaker.
    counter BREAKER_REJECTIONS_TOTAL = "corral_circuit_breaker_rejections_total",
        "Requests failed fast by an open circuit breaker.";
}
