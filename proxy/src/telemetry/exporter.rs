//! The Prometheus recorder: one per process, every metric described.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{
    CONNECTIONS_CLOSED_TOTAL, PROMPT_TOKENS_TOTAL, QUEUE_BYTES, QUEUE_DEPTH, REFUSALS_TOTAL,
    REQUESTS_IN_FLIGHT, REQUESTS_TOTAL, REQUEST_DURATION_SECONDS, TIME_TO_FIRST_BYTE_SECONDS,
    TOKENS_GENERATED_TOTAL, UPSTREAM_CAPACITY, UPSTREAM_IN_FLIGHT,
};

/// Buckets for request durations: LLM answers take from milliseconds
/// (metadata, cache) to minutes (long generations).
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

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
        corral_core::REQUESTS_WITHOUT_META_TOTAL,
        "Requests a layer let through untouched because nothing gave them a RequestMeta, by layer (in the proxy classify always does: expect none)."
    );
    metrics::describe_counter!(
        corral_classify::UNKNOWN_KEYS_TOTAL,
        "Requests that sent an API key no agent has while keys are optional (served as keyless agents); each distinct key is also warned about once."
    );
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
    metrics::describe_counter!(
        CONNECTIONS_CLOSED_TOTAL,
        "Client connections Corral closed to protect itself, by reason (per_address, write_stall)."
    );
    metrics::describe_gauge!(UPSTREAM_CAPACITY, "Requests the upstream may run at once.");
    metrics::describe_gauge!(
        super::POOL_CAPACITY,
        "Permits of one pool of the scheduler: `*`, or a model's own."
    );
    metrics::describe_gauge!(super::POOL_IN_FLIGHT, "Permits held in one pool.");
    metrics::describe_gauge!(super::POOL_QUEUED, "Requests waiting in one pool.");
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
