//! What the front watches of each answer: metrics with bounded labels,
//! the access log line, and the request's events; and of a request left
//! before its answer ([`Unanswered`]).

use std::sync::Arc;

use corral_core::{
    headers, BoxBody, End, Endpoint, EndpointKind, EventSink, EventValue, OnEnd, RequestId,
    RequestMeta, Usage,
};
use http::{Response, StatusCode};
use tokio::time::Instant;
use tracing::Span;

use crate::telemetry::{request_metrics, RequestMetrics, REFUSALS_TOTAL};

mod span;
mod unanswered;

pub(crate) use unanswered::Unanswered;

/// A request counted in `corral_requests_in_flight` for its class, from
/// the moment its class is known (queued, generating or answering) until
/// this is dropped: with the answer's end, or with the request if the
/// client leaves first.
/// It keeps the request's metric handles, looked up once.
#[derive(Default)]
pub(crate) struct InFlight(Option<Arc<RequestMetrics>>);

impl InFlight {
    pub(crate) fn counted(&self) -> bool {
        self.0.is_some()
    }

    /// Counts the request in its class's gauge, once.
    pub(crate) fn count(&mut self, handles: Arc<RequestMetrics>) {
        if self.0.is_none() {
            handles.in_flight().increment(1.0);
            self.0 = Some(handles);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(handles) = self.0.take() {
            handles.in_flight().decrement(1.0);
        }
    }
}

/// One answer being watched, from its headers to its end.
pub(crate) struct Observation {
    start: Instant,
    endpoint: Endpoint,
    status: StatusCode,
    span: Span,
    meta: Option<RequestMeta>,
    request_id: RequestId,
    events: Option<Arc<dyn EventSink>>,
    metrics: Arc<RequestMetrics>,
    first_byte: Option<Instant>,
    /// The refusal's `X-Corral-Reason`, when a layer refused.
    reason: Option<String>,
    /// Its place in its trace, and where its span is exported.
    trace: Option<(crate::trace::TraceContext, Arc<crate::trace::Exporter>)>,
    /// Dropped with the observation, when the answer ends.
    _in_flight: InFlight,
}

/// Whether the access line (`corral::access`) is written. The span's
/// `status` and `duration_ms` are known only once the stack has answered,
/// and no line but the access line is logged in the span after that:
/// without it, recording them would format two fields for nobody.
pub(crate) fn access_logged() -> bool {
    tracing::enabled!(target: "corral::access", tracing::Level::INFO)
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Observation {
    /// The answer's headers are here: counts a refusal, records the
    /// request's first events, and keeps it counted in flight (from now,
    /// if its class was not known before) until the answer ends.
    pub(crate) fn at_headers(
        response: &Response<BoxBody>,
        start: Instant,
        endpoint: Endpoint,
        span: Span,
        (meta, mut in_flight): (Option<RequestMeta>, InFlight),
        request_id: RequestId,
        events: Option<Arc<dyn EventSink>>,
    ) -> Self {
        let status = response.status();
        // Looked up when the class became known, unless it never did.
        let handles = match &in_flight.0 {
            Some(handles) => handles.clone(),
            None => {
                let handles = request_metrics(
                    endpoint,
                    meta.as_ref().map(|m| m.class.as_str()),
                    meta.as_ref().and_then(|m| m.model.as_deref()),
                );
                in_flight.count(handles.clone());
                handles
            }
        };
        let reason = response
            .headers()
            .get(headers::X_CORRAL_REASON)
            .and_then(|v| v.to_str().ok());
        if let Some(reason) = reason {
            let priority = meta
                .as_ref()
                .map_or_else(|| "none".to_string(), |m| m.priority.to_string());
            metrics::counter!(REFUSALS_TOTAL, "reason" => reason.to_string(), "priority" => priority).increment(1);
        }

        let observation = Self {
            start,
            endpoint,
            status,
            span,
            meta,
            request_id,
            events,
            metrics: handles,
            first_byte: None,
            reason: reason.map(str::to_string),
            trace: None,
            _in_flight: in_flight,
        };
        if observation.records_events(reason.is_some()) {
            observation.head_events(response);
        }
        observation
    }

    /// The events a request's answer tells at its headers: received, then
    /// refused, or dispatched and served from the cache.
    fn head_events(&self, response: &Response<BoxBody>) {
        self.event(
            "received",
            &received(
                self.endpoint,
                self.meta.as_ref(),
                self.metrics.class(),
                self.start,
            ),
        );
        if let Some(reason) = &self.reason {
            self.event(
                "refused",
                &[
                    ("reason", reason.as_str().into()),
                    ("status", self.status.as_u16().into()),
                ],
            );
            return;
        }
        // By `HeaderName`: a `&str` is parsed and checked as a name at
        // every lookup (~360 instructions each under callgrind).
        let header =
            |name: http::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(queue_ms) =
            header(headers::X_CORRAL_QUEUE_MS).and_then(|v| v.parse::<u64>().ok())
        {
            self.event("dispatched", &[("queue_ms", queue_ms.into())]);
        }
        if let Some(cache) =
            header(corral_cache::X_CORRAL_CACHE).filter(|v| *v == "hit" || *v == "stale")
        {
            self.event("cache_hit", &[("freshness", cache.into())]);
        }
    }

    fn agent(&self) -> &str {
        self.meta.as_ref().map_or("anonymous", |m| m.agent.as_str())
    }

    /// Events are kept for inference and for every refusal; dashboards
    /// polling `/api/tags` do not fill the log.
    fn records_events(&self, refused: bool) -> bool {
        self.events.is_some() && (refused || self.endpoint.kind() == EndpointKind::Inference)
    }

    /// Records an event about this request; its data is the object of
    /// `fields`, recorded without building a `serde_json::Value`.
    fn event(&self, kind: &'static str, fields: &[(&'static str, EventValue<'_>)]) {
        if let Some(events) = &self.events {
            events.record_fields(kind, self.agent(), self.request_id.as_str(), fields);
        }
    }

    fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            let now = Instant::now();
            self.first_byte = Some(now);
            self.metrics
                .first_byte(now.duration_since(self.start).as_secs_f64());
        }
    }

    /// An answer with no body (to a HEAD) was sent.
    /// Its span, in `trace`, is exported to `exporter` when it ends.
    pub(crate) fn traced(
        mut self,
        trace: crate::trace::TraceContext,
        exporter: Arc<crate::trace::Exporter>,
    ) -> Self {
        self.trace = Some((trace, exporter));
        self
    }

    pub(crate) fn finish_without_body(self) {
        let outcome = outcome(&End::Complete, self.status, self.reason.as_deref());
        self.finish(outcome, Usage::default(), None);
    }

    /// The answer ended so (see [`outcome`]); `error` is why it broke.
    pub(crate) fn finish(
        self,
        outcome: &'static str,
        usage: Usage,
        error: Option<&(dyn std::error::Error + 'static)>,
    ) {
        let elapsed = self.start.elapsed();
        self.export_span(elapsed, outcome, &usage);
        self.metrics.finished(
            self.status,
            self.meta.as_ref().map(|m| m.agent.as_str()),
            outcome,
            elapsed.as_secs_f64(),
            usage,
        );
        if access_logged() {
            self.span.record("duration_ms", millis(elapsed));
        }
        if outcome == "error" {
            // A failure, with its cause when the body broke mid-stream.
            tracing::warn!(
                target: "corral::access",
                parent: &self.span,
                status = self.status.as_u16(),
                duration_ms = millis(elapsed),
                outcome,
                error = error.map(tracing::field::display),
                "request failed"
            );
        } else {
            tracing::info!(
                target: "corral::access",
                parent: &self.span,
                status = self.status.as_u16(),
                duration_ms = millis(elapsed),
                outcome,
                "request finished"
            );
        }
        // A refusal was recorded as such at its headers.
        if self.records_events(false) && self.reason.is_none() {
            if let Some(first) = self.first_byte {
                self.event(
                    "first_byte",
                    &[("ttfb_ms", millis(first.duration_since(self.start)).into())],
                );
            }
            self.event(
                "completed",
                &[
                    ("outcome", outcome.into()),
                    ("status", self.status.as_u16().into()),
                    ("duration_ms", millis(elapsed).into()),
                    ("prompt_tokens", usage.prompt.unwrap_or(0).into()),
                    ("generated_tokens", usage.generated.unwrap_or(0).into()),
                ],
            );
        }
    }
}

/// The data of a request's `received` event: it arrived at `start`.
/// `received_at` is the wall clock now, with its fraction, less the time
/// since: whole seconds would put it up to a second early.
fn received<'a>(
    endpoint: Endpoint,
    meta: Option<&'a RequestMeta>,
    class: &'a str,
    start: Instant,
) -> [(&'static str, EventValue<'a>); 5] {
    let received_at = corral_core::unix_now_f64() - start.elapsed().as_secs_f64();
    [
        ("endpoint", endpoint.as_str().into()),
        ("model", meta.map(|m| m.model_str()).into()),
        ("priority", meta.map(|m| m.priority.get()).into()),
        ("class", class.into()),
        ("received_at", received_at.into()),
    ]
}

/// What the front holds until the answer's body ends (core's
/// end-of-stream watcher): its first byte, the tokens it reports, and how
/// it ended.
pub(crate) struct Watch {
    observation: Observation,
    usage: Usage,
}

impl Watch {
    pub(crate) fn new(observation: Observation) -> Self {
        Self {
            observation,
            usage: Usage::default(),
        }
    }
}

impl OnEnd for Watch {
    fn on_data(&mut self, chunk: &[u8]) {
        self.observation.first_byte();
        if self.observation.endpoint.kind() == EndpointKind::Inference {
            self.usage.read(chunk);
        }
    }

    fn on_end(self, end: End<'_>) {
        let outcome = outcome(
            &end,
            self.observation.status,
            self.observation.reason.as_deref(),
        );
        let error = match end {
            End::Failed(e) => Some(e as &(dyn std::error::Error + 'static)),
            _ => None,
        };
        self.observation.finish(outcome, self.usage, error);
    }
}

/// How an answer ended, for metrics, the access log and events:
/// `completed` (answered in full), `refused` (a layer said no: shed, rate
/// limited, ...), `error` (the upstream failed: a 5xx, a timeout, a
/// stream it broke) or `cancelled` (the client left first).
pub(crate) fn outcome(end: &End<'_>, status: StatusCode, reason: Option<&str>) -> &'static str {
    match end {
        End::Cancelled => "cancelled",
        End::Failed(_) => "error",
        End::Complete => match reason {
            Some(reason) if reason.starts_with("upstream_") || reason == "unexpected" => "error",
            Some(_) => "refused",
            None if status.is_server_error() => "error",
            None => "completed",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_completed_refused_failed_or_cancelled() {
        let broke = std::io::Error::other("cut");
        let table: [(End<'_>, u16, Option<&str>, &str); 8] = [
            (End::Complete, 200, None, "completed"),
            (End::Complete, 404, None, "completed"),
            (End::Complete, 500, None, "error"),
            (End::Complete, 504, Some("upstream_timeout"), "error"),
            (End::Complete, 503, Some("shed"), "refused"),
            (End::Complete, 429, Some("rate_limited"), "refused"),
            (End::Failed(&broke), 200, None, "error"),
            (End::Cancelled, 200, None, "cancelled"),
        ];
        for (end, status, reason, expected) in table {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                outcome(&end, status, reason),
                expected,
                "{end:?} {status} {reason:?}"
            );
        }
    }
}
