//! The names and meaning of the batcher's metrics.

corral_core::metrics! {
    /// Embedding requests merged into a batch with others.
    counter BATCHED_REQUESTS_TOTAL = "corral_batched_requests_total",
        "Embedding requests merged into a batch with others.", exported at 0;
    /// Upstream calls made for batches.
    counter BATCHES_TOTAL = "corral_batches_total",
        "Upstream calls made for batches of embedding requests.", exported at 0;
}
