//! The names and meaning of the scheduler's metrics.

corral_core::metrics! {
    /// Reserved permits lent to a request of a lower priority predicted to
    /// give them back within `lend_within`, per pool.
    counter RESERVE_LENT_TOTAL = "corral_priority_reserve_lent_total",
        "Reserved upstream permits lent to a lower priority predicted to give them back within lend_within, per pool.";
}
