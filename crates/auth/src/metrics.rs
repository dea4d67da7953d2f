//! The layer's metric names.

/// Request ids forgotten before their time because the replay memory was
/// full: each one could be replayed within its window.
pub const REPLAY_EVICTIONS_TOTAL: &str = "corral_replay_memory_evictions_total";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        REPLAY_EVICTIONS_TOTAL,
        "Request ids forgotten early because the replay memory was full."
    );
}
