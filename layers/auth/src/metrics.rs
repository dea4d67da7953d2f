//! The layer's metric names.

/// Request ids forgotten before their time because the replay memory was
/// full: each one could be replayed within its window.
pub const REPLAY_EVICTIONS_TOTAL: &str = "corral_replay_memory_evictions_total";

/// Replay-store commands that failed or timed out (Redis away): answered
/// from this replica's memory instead.
pub const REPLAY_STORE_ERRORS_TOTAL: &str = "corral_replay_store_errors_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        REPLAY_STORE_ERRORS_TOTAL,
        "Replay-store commands that failed or timed out; this replica's memory answered instead."
    );
    metrics::describe_counter!(
        REPLAY_EVICTIONS_TOTAL,
        "Request ids forgotten early because the replay memory was full."
    );
}
