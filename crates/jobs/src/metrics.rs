//! The names and meaning of the jobs' metrics.

corral_core::metrics! {
    /// Jobs accepted.
    counter JOBS_SUBMITTED_TOTAL = "corral_jobs_submitted_total",
        "Async jobs accepted (Prefer: respond-async or POST /corral/jobs).";
    /// Jobs ended, by `status` (done, failed, cancelled).
    counter JOBS_FINISHED_TOTAL = "corral_jobs_finished_total",
        "Async jobs ended, by status: done, failed, cancelled.";
    /// Jobs started again on this replica after the one running them
    /// stopped renewing its claim.
    counter JOBS_TAKEN_OVER_TOTAL = "corral_jobs_taken_over_total",
        "Async jobs taken over from a replica that stopped, and run again from the start.";
    /// Jobs refused: the store full or away.
    counter JOBS_REFUSED_TOTAL = "corral_jobs_refused_total",
        "Async jobs refused because the job store was full or did not answer.";
    /// Jobs this replica runs now.
    gauge JOBS_RUNNING = "corral_jobs_running",
        "Async jobs this replica runs now (waiting for the upstream or generating).";
    /// Callbacks that could not be delivered after every attempt.
    counter JOBS_CALLBACKS_FAILED_TOTAL = "corral_jobs_callbacks_failed_total",
        "Job completion callbacks not delivered after every attempt.";
}
