//! The names and meaning of the degrade layer's metrics.

corral_core::metrics! {
    /// The level in force: 0 Normal, 1 L1, 2 L2, 3 Critical.
    gauge DEGRADATION_LEVEL = "corral_degradation_level",
        "Degradation level in force: 0 Normal, 1 L1, 2 L2, 3 Critical.";
    /// The smoothed load behind it, 0 to 1, at the last change.
    gauge DEGRADATION_LOAD = "corral_degradation_load",
        "Smoothed load (0 to 1) at the last level change.";
    /// Requests changed by degradation, by what was done.
    counter DEGRADED_REQUESTS_TOTAL = "corral_degraded_requests_total",
        "Requests changed by degradation: capped, rewritten, refused, defaulted.";
}
