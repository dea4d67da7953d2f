//! The names and meaning of the sagas' metrics.

corral_core::metrics! {
    /// Sagas started (by `run`; a resumed saga is not counted again).
    counter SAGAS_STARTED_TOTAL = "corral_sagas_started_total",
        "Sagas started.",
        exported at 0;
    /// Sagas whose every step succeeded: divided by
    /// [`SAGAS_STARTED_TOTAL`], the design's `saga_completion_rate`.
    counter SAGAS_COMPLETED_TOTAL = "corral_sagas_completed_total",
        "Sagas whose every step succeeded (completion rate: completed / started).",
        exported at 0;
    /// Sagas that ended compensated (a step failed, or cancelled).
    counter SAGAS_COMPENSATED_TOTAL = "corral_sagas_compensated_total",
        "Sagas that ended with every step that ran compensated.",
        exported at 0;
    /// Coordination failures, by `reason`: `step` (an action failed),
    /// `compensation` (an attempt at a compensation failed), `stuck` (a
    /// saga ended `failed`).
    counter COORDINATION_FAILURES_TOTAL = "corral_coordination_failures_total",
        "Saga steps that failed, compensation attempts that failed, sagas left failed, and sagas not resumed, by reason.";
}

pub(crate) fn failure(reason: &'static str) {
    metrics::counter!(COORDINATION_FAILURES_TOTAL, "reason" => reason).increment(1);
}
