//! The layer's metric names.

corral_core::metrics! {
    /// Request ids forgotten before their time because the replay memory was
    /// full: each one could be replayed within its window.
    counter REPLAY_EVICTIONS_TOTAL = "corral_replay_memory_evictions_total",
        "Request ids forgotten early because the replay memory was full.";

    /// Replay-store commands that failed or timed out (Redis away): answered
    /// from this replica's memory instead.
    counter REPLAY_STORE_ERRORS_TOTAL = "corral_replay_store_errors_total",
        "Replay-store commands that failed or timed out; this replica's memory answered instead.";
}
