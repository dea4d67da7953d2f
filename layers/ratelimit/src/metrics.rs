//! The names and meaning of the rate limiter's metrics.

corral_core::metrics! {
    /// Requests refused by a rate limit, by class and quota.
    counter RATE_LIMITED_TOTAL = "corral_rate_limited_total",
        "Requests refused by a rate limit, by class and quota.";
    /// Requests that went over a shadow budget and passed, by class and
    /// budget.
    counter BUDGET_OVERRUN_TOTAL = "corral_budget_overrun_total",
        "Requests that went over a shadow (report-only) token budget, by class and budget.";
}
