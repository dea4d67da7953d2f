//! The names and meaning of the bulkhead's metrics.

corral_core::metrics! {
    /// In use over capacity, per compartment (the design's
    /// `bulkhead_saturation`), 0 to 1.
    gauge BULKHEAD_SATURATION = "corral_bulkhead_saturation",
        "Requests running over capacity, per compartment (0 to 1).";
    /// Requests running, per compartment.
    gauge BULKHEAD_IN_USE = "corral_bulkhead_in_use", "Requests running, per compartment.";
    /// Requests refused because their compartment was full.
    counter BULKHEAD_REJECTIONS_TOTAL = "corral_bulkhead_rejections_total",
        "Requests refused because their compartment was full.";
}
