//! Exports each request's span to an OpenTelemetry collector: OTLP over
//! HTTP with JSON bodies (`POST {otlp_endpoint}/v1/traces`), in batches
//! of up to [`BATCH`] spans or every [`EVERY`], from a task of its own.
//! A request only hands its span over (a bounded channel: when the
//! collector cannot keep up, spans are dropped and counted in
//! `corral_spans_dropped_total`, the requests never wait).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::trace::{hex, FinishedSpan};

/// Spans sent in one request to the collector at most.
const BATCH: usize = 512;
/// How long a span waits for its batch at most.
const EVERY: Duration = Duration::from_secs(1);
/// Spans waiting to be sent at most; past it they are dropped.
const QUEUE: usize = 8192;
/// How long the collector has to answer a batch.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Spans dropped: the collector was away or slower than the requests.
pub(crate) const SPANS_DROPPED_TOTAL: &str = "corral_spans_dropped_total";

/// Hands finished spans to the task that sends them.
#[derive(Debug)]
pub(crate) struct SpanExporter {
    spans: mpsc::Sender<FinishedSpan>,
}

impl SpanExporter {
    /// Sends spans to the collector at `endpoint` (`http://host:4318`)
    /// as `service`; the URL is checked now.
    pub(crate) fn start(endpoint: &str, service: &str) -> Result<Arc<Self>, String> {
        let url: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(format!(
                "{endpoint:?}: give the collector's OTLP/HTTP address, http://host:4318"
            ));
        }
        let (spans, received) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(received, url, service.to_string()));
        Ok(Arc::new(Self { spans }))
    }

    /// Queues `span` to be sent; dropped (and counted) when the queue is
    /// full.
    pub(crate) fn export(&self, span: FinishedSpan) {
        if self.spans.try_send(span).is_err() {
            metrics::counter!(SPANS_DROPPED_TOTAL).increment(1);
        }
    }
}

/// The task: batches from `received`, posted to `url`, until every
/// exporter is gone.
async fn send_batches(mut received: mpsc::Receiver<FinishedSpan>, url: http::Uri, service: String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut warned = false;
    while let Some(first) = received.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len();
        let body = serde_json::to_vec(&document(&service, batch)).unwrap_or_default();
        let request = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else { continue };
        let sent = tokio::time::timeout(TIMEOUT, client.request(request)).await;
        match sent {
            Ok(Ok(response)) if response.status().is_success() => warned = false,
            outcome => {
                metrics::counter!(SPANS_DROPPED_TOTAL).increment(count as u64);
                if !warned {
                    let why = match outcome {
                        Ok(Ok(response)) => format!("answered {}", response.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer in time".to_string(),
                    };
                    tracing::warn!(collector = %url, error = %why, "spans not exported; logged once until it works again");
                    warned = true;
                }
            }
        }
    }
}

/// An OTLP/HTTP JSON `ExportTraceServiceRequest` of `spans` from
/// `service`.
fn document(service: &str, spans: Vec<FinishedSpan>) -> Value {
    let spans: Vec<Value> = spans
        .into_iter()
        .map(|span| {
            let mut value = json!({
                "traceId": hex(&span.context.trace_id),
                "spanId": hex(&span.context.span_id),
                "name": span.name,
                // SPAN_KIND_SERVER.
                "kind": 2,
                "startTimeUnixNano": span.start_unix_nanos.to_string(),
                "endTimeUnixNano": span.end_unix_nanos.to_string(),
                "attributes": span.attributes.into_iter().map(|(key, value)| json!({"key": key, "value": any_value(value)})).collect::<Vec<_>>(),
                // STATUS_CODE_ERROR, else UNSET.
                "status": {"code": if span.error { 2 } else { 0 }},
            });
            if let Some(parent) = span.context.parent {
                value["parentSpanId"] = json!(hex(&parent));
            }
            value
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "corral", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

/// An OTLP `AnyValue`.
fn any_value(value: Value) -> Value {
    match value {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceContext;

    #[test]
    fn a_span_is_written_as_otlp_json() {
        let context = TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            flags: 1,
        };
        let document = document(
            "corral",
            vec![FinishedSpan {
                context,
                name: "POST /api/generate".into(),
                start_unix_nanos: 1_000,
                end_unix_nanos: 2_000,
                attributes: vec![
                    ("corral.agent", json!("planner")),
                    ("http.response.status_code", json!(200)),
                ],
                error: false,
            }],
        );
        let span = &document["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "01010101010101010101010101010101");
        assert_eq!(span["spanId"], "0202020202020202");
        assert_eq!(span["parentSpanId"], "0303030303030303");
        assert_eq!(span["startTimeUnixNano"], "1000");
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "planner");
        assert_eq!(span["attributes"][1]["value"]["intValue"], "200");
        assert_eq!(
            document["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "corral"
        );
    }
}
