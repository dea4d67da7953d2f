//! The names and meaning of the rate limiter's metrics.

corral_core::metrics! {
    /// Requests refused by a rate limit, by class and quota.
    counter RATE_LIMITED_TOTAL = "corral_rate_limited_total",
        "Requests refused by a rate limit, by class and quota.";
}
