//! The Prometheus recorder: one per process, every metric described.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{REQUEST_DURATION_SECONDS, TIME_TO_FIRST_BYTE_SECONDS};

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
    corral_registry::metrics::describe();
    metrics::describe_counter!(
        corral_core::REQUESTS_WITHOUT_META_TOTAL,
        "Requests a layer let through untouched because nothing gave them a RequestMeta, by layer (in the proxy classify always does: expect none)."
    );
    metrics::describe_counter!(
        corral_classify::UNKNOWN_KEYS_TOTAL,
        "Requests that sent an API key no agent has while keys are optional (served as keyless agents); each distinct key is also warned about once."
    );
    super::describe_own();
}
