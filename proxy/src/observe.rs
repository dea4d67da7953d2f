//! What the front watches of each answer: metrics with bounded labels,
//! the access log line, and the request's events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use corral_core::{
    headers, BoxBody, BoxError, Endpoint, EndpointKind, EventSink, EventValue, RequestId,
    RequestMeta, Usage,
};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;
use tracing::Span;

use crate::telemetry::{request_metrics, RequestMetrics, REFUSALS_TOTAL};

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
    refused: bool,
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
            refused: reason.is_some(),
            _in_flight: in_flight,
        };
        if observation.records_events(reason.is_some()) {
            let received_at = corral_core::unix_now() as f64 - start.elapsed().as_secs_f64();
            let meta = observation.meta.as_ref();
            observation.event(
                "received",
                &[
                    ("endpoint", endpoint.as_str().into()),
                    ("model", meta.map(|m| m.model_str()).into()),
                    ("priority", meta.map(|m| m.priority.get()).into()),
                    ("class", (**observation.metrics.class()).into()),
                    ("received_at", received_at.into()),
                ],
            );
            if let Some(reason) = reason {
                observation.event(
                    "refused",
                    &[
                        ("reason", reason.into()),
                        ("status", status.as_u16().into()),
                    ],
                );
            } else {
                let header =
                    |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                if let Some(queue_ms) =
                    header("x-corral-queue-ms").and_then(|v| v.parse::<u64>().ok())
                {
                    observation.event("dispatched", &[("queue_ms", queue_ms.into())]);
                }
                if let Some(cache) =
                    header("x-corral-cache").filter(|v| *v == "hit" || *v == "stale")
                {
                    observation.event("cache_hit", &[("freshness", cache.into())]);
                }
            }
        }
        observation
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

    /// The answer ended: `completed`, `cancelled` (the client left) or
    /// `error` (the stream broke).
    pub(crate) fn finish(self, outcome: &'static str, usage: Usage) {
        let elapsed = self.start.elapsed();
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
        tracing::info!(
            target: "corral::access",
            parent: &self.span,
            status = self.status.as_u16(),
            duration_ms = millis(elapsed),
            outcome,
            "request finished"
        );
        // A refusal was recorded as such at its headers.
        if self.records_events(false) && !self.refused {
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

/// The response body, watched for its first byte, the tokens it reports,
/// and its end: sent in full, broken, or abandoned by the client.
pub(crate) struct Observed {
    inner: BoxBody,
    observation: Option<Observation>,
    usage: Usage,
}

impl Observed {
    pub(crate) fn new(inner: BoxBody, observation: Observation) -> Self {
        let mut body = Self {
            inner,
            observation: Some(observation),
            usage: Usage::default(),
        };
        if http_body::Body::is_end_stream(&body.inner) {
            body.end("completed");
        }
        body
    }

    fn end(&mut self, outcome: &'static str) {
        if let Some(observation) = self.observation.take() {
            observation.finish(outcome, self.usage);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end("completed"),
            Poll::Ready(Some(Err(_))) => this.end("error"),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(observation) = this.observation.as_mut() {
                    observation.first_byte();
                    if let Some(data) = frame.data_ref() {
                        if observation.endpoint.kind() == EndpointKind::Inference {
                            this.usage.read(data.chunk());
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.end("completed");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}
