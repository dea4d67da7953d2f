//! Logs (`tracing`) and metrics (`metrics`, exported for Prometheus).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by endpoint and status.
pub const REQUESTS_TOTAL: &str = "corral_requests_total";
/// Time from receiving a request to the end of its response body, by
/// endpoint and status, in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "corral_request_duration_seconds";
/// Answers in progress (headers sent, body not ended), by class.
pub const REQUESTS_IN_FLIGHT: &str = "corral_requests_in_flight";
/// Time from receiving a request to the first byte of its answer's body,
/// by endpoint and class, in seconds.
pub const TIME_TO_FIRST_BYTE_SECONDS: &str = "corral_time_to_first_byte_seconds";
/// Tokens generated upstream (from `eval_count`), by model and class.
pub const TOKENS_GENERATED_TOTAL: &str = "corral_tokens_generated_total";
/// Prompt tokens evaluated upstream (from `prompt_eval_count`), by model
/// and class.
pub const PROMPT_TOKENS_TOTAL: &str = "corral_prompt_tokens_total";
/// 1 when the upstream answered its last probe, 0 when not.
pub const UPSTREAM_UP: &str = "corral_upstream_up";
/// Requests Corral refused, by reason and priority.
pub const REFUSALS_TOTAL: &str = "corral_refusals_total";

/// Distinct model names exported as labels before the rest count as
/// `other`.
pub const DEFAULT_MAX_MODEL_LABELS: usize = 32;

static LABELS: std::sync::OnceLock<LabelPolicy> = std::sync::OnceLock::new();

/// How many distinct values a client-chosen label may take.
#[derive(Debug)]
struct LabelPolicy {
    per_agent: bool,
    max_models: usize,
    models: std::sync::Mutex<std::collections::HashMap<String, metrics::SharedString>>,
}

fn labels() -> &'static LabelPolicy {
    LABELS.get_or_init(|| LabelPolicy {
        per_agent: false,
        max_models: DEFAULT_MAX_MODEL_LABELS,
        models: std::sync::Mutex::new(std::collections::HashMap::new()),
    })
}

/// Sets the label policy once per process (the first proxy's `[metrics]`
/// wins: the recorder is global).
pub fn configure_labels(per_agent: bool, max_models: usize) {
    let _ = LABELS.set(LabelPolicy {
        per_agent,
        max_models,
        models: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
}

/// A model name as a label: the first `max_model_labels` names seen are
/// themselves, the rest `other`, so a client cannot grow the series
/// without bound.
pub(crate) fn model_label(model: &str) -> metrics::SharedString {
    let policy = labels();
    let mut models = policy.models.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(label) = models.get(model) {
        return label.clone();
    }
    if models.len() >= policy.max_models {
        return metrics::SharedString::const_str("other");
    }
    let label = metrics::SharedString::from(std::sync::Arc::<str>::from(model));
    models.insert(model.to_string(), label.clone());
    label
}

/// A class as a label: classes come from the configuration, a bounded set.
pub(crate) fn class_label(class: &str) -> metrics::SharedString {
    metrics::SharedString::from(class.to_string())
}

/// The agent as a label, only when the operator turned it on.
pub(crate) fn agent_label(agent: &str) -> Option<metrics::SharedString> {
    labels()
        .per_agent
        .then(|| metrics::SharedString::from(agent.to_string()))
}

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
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TIME_TO_FIRST_BYTE_SECONDS.to_string()),
                        &DURATION_BUCKETS,
                    )
                })
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
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by endpoint, status and class."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from receiving a request to the end of its answer, by endpoint, model, class and outcome."
    );
    metrics::describe_gauge!(
        REQUESTS_IN_FLIGHT,
        "Answers in progress (headers sent, body not ended), by class."
    );
    metrics::describe_histogram!(
        TIME_TO_FIRST_BYTE_SECONDS,
        metrics::Unit::Seconds,
        "Time from receiving a request to the first byte of its answer, by endpoint and class."
    );
    metrics::describe_counter!(
        TOKENS_GENERATED_TOTAL,
        "Tokens generated upstream (eval_count), by model and class."
    );
    metrics::describe_counter!(
        PROMPT_TOKENS_TOTAL,
        "Prompt tokens evaluated upstream (prompt_eval_count), by model and class."
    );
    metrics::describe_counter!(
        REFUSALS_TOTAL,
        "Requests Corral refused, by reason and priority."
    );
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
