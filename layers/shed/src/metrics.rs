//! The names and meaning of shed's metrics.

/// Requests refused, by reason and priority (the design's
/// `dropped_requests`).
pub const DROPPED_REQUESTS_TOTAL: &str = "corral_dropped_requests_total";
/// Arrivals that found the queue full or shedding on, by priority,
/// whether they were then refused or waited for room (the design's
/// `backpressure_events`).
pub const BACKPRESSURE_EVENTS_TOTAL: &str = "corral_backpressure_events_total";

/// The queue's bound, `max_queue`, for alerts on saturation.
pub const QUEUE_LIMIT: &str = "corral_queue_limit";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        DROPPED_REQUESTS_TOTAL,
        "Requests refused by load shedding, by reason and priority."
    );
    metrics::describe_gauge!(
        QUEUE_LIMIT,
        "The bound on requests waiting for the upstream (max_queue)."
    );
    metrics::describe_counter!(
        BACKPRESSURE_EVENTS_TOTAL,
        "Arrivals that met a full queue or delay shedding, by priority."
    );
}

pub(crate) const PRIORITY_LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
