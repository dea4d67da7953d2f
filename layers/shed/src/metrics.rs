//! The names and meaning of shed's metrics.

corral_core::metrics! {
    /// Requests refused, by reason and priority (the design's
    /// `dropped_requests`).
    counter DROPPED_REQUESTS_TOTAL = "corral_dropped_requests_total",
        "Requests refused by load shedding, by reason and priority.";
    /// Arrivals that found the queue full or shedding on, by priority,
    /// whether they were then refused or waited for room (the design's
    /// `backpressure_events`).
    counter BACKPRESSURE_EVENTS_TOTAL = "corral_backpressure_events_total",
        "Arrivals that met a full queue or delay shedding, by priority.";

    /// The queue's bound, `max_queue`, for alerts on saturation.
    gauge QUEUE_LIMIT = "corral_queue_limit",
        "The bound on requests waiting for the upstream (max_queue).";
}

pub(crate) const PRIORITY_LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
