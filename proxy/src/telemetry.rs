//! Logs (`tracing`) and metrics (`metrics`, exported for Prometheus).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by endpoint and status.
pub const REQUESTS_TOTAL: &str = "corral_requests_total";
/// Time from receiving a request to the end of its response body, by
/// endpoint and status, in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "corral_request_duration_seconds";
/// Requests being answered now.
pub const REQUESTS_IN_FLIGHT: &str = "corral_requests_in_flight";

/// Requests the upstream may run at once (the scheduler's capacity).
pub const UPSTREAM_CAPACITY: &str = "corral_upstream_capacity";
/// Requests holding an upstream permit now.
pub const UPSTREAM_IN_FLIGHT: &str = "corral_upstream_in_flight";
/// Requests waiting for an upstream permit, by priority (`queue_depth`).
pub const QUEUE_DEPTH: &str = "corral_queue_depth";
/// Bytes of request bodies held by waiting requests.
pub const QUEUE_BYTES: &str = "corral_queue_bytes";

const PRIORITY_LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// Sets the scheduler's gauges from `load`: read at scrape time, so the
/// request path pays nothing for them.
pub fn record_load(load: &corral_core::LoadSnapshot) {
    metrics::gauge!(UPSTREAM_CAPACITY).set(load.capacity as f64);
    metrics::gauge!(UPSTREAM_IN_FLIGHT).set(load.in_flight as f64);
    metrics::gauge!(QUEUE_BYTES).set(load.queued_bytes as f64);
    for (label, depth) in PRIORITY_LABELS.iter().zip(load.queued) {
        metrics::gauge!(QUEUE_DEPTH, "priority" => *label).set(depth as f64);
    }
}

/// Buckets for request durations: LLM answers take from milliseconds
/// (metadata, cache) to minutes (long generations).
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one coloured line per event.
    Text,
    /// For machines: one JSON object per line, span fields included.
    Json,
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Already installed (tests start several proxies in one process).
    let _ = result;
}

/// The process's Prometheus recorder, installed on first use.
///
/// One per process: the `metrics` facade has one global recorder, and
/// every proxy in the process (tests start several) reports to it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION_SECONDS.to_string()),
                    &DURATION_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

fn describe() {
    corral_shed::metrics::describe();
    corral_bulkhead::metrics::describe();
    corral_ratelimit::metrics::describe();
    corral_retry::metrics::describe();
    corral_breaker::metrics::describe();
    corral_degrade::metrics::describe();
    corral_cache::metrics::describe();
    corral_batch::metrics::describe();
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests answered, by endpoint and status.");
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from receiving a request to the end of its response body, by endpoint and status."
    );
    metrics::describe_gauge!(REQUESTS_IN_FLIGHT, "Requests being answered now.");
    metrics::describe_gauge!(UPSTREAM_CAPACITY, "Requests the upstream may run at once.");
    metrics::describe_gauge!(
        UPSTREAM_IN_FLIGHT,
        "Requests holding an upstream permit now."
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Requests waiting for an upstream permit, by priority."
    );
    metrics::describe_gauge!(
        QUEUE_BYTES,
        metrics::Unit::Bytes,
        "Bytes of request bodies held by waiting requests."
    );
}

/// A status code as a label value, without allocating for common ones.
pub(crate) fn status_label(status: http::StatusCode) -> metrics::SharedString {
    let fixed = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(fixed)
}
