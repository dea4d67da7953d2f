//! What the front watches of each answer: metrics with bounded labels,
//! the access log line, and the request's events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use corral_core::{
    headers, BoxBody, BoxError, Endpoint, EndpointKind, EventSink, NewEvent, RequestId,
    RequestMeta, Usage,
};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use metrics::SharedString;
use serde_json::json;
use tokio::time::Instant;
use tracing::Span;

use crate::telemetry::{
    agent_label, class_label, model_label, status_label, PROMPT_TOKENS_TOTAL, REFUSALS_TOTAL,
    REQUESTS_IN_FLIGHT, REQUESTS_TOTAL, REQUEST_DURATION_SECONDS, TIME_TO_FIRST_BYTE_SECONDS,
    TOKENS_GENERATED_TOTAL,
};

/// One answer being watched, from its headers to its end.
pub(crate) struct Observation {
    start: Instant,
    endpoint: Endpoint,
    status: StatusCode,
    span: Span,
    meta: Option<RequestMeta>,
    request_id: RequestId,
    events: Option<Arc<dyn EventSink>>,
    class: SharedString,
    model: SharedString,
    first_byte: Option<Instant>,
    refused: bool,
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Observation {
    /// The answer's headers are here: counts a refusal, records the
    /// request's first events, and starts counting it in progress.
    pub(crate) fn at_headers(
        response: &Response<BoxBody>,
        start: Instant,
        endpoint: Endpoint,
        span: Span,
        meta: Option<RequestMeta>,
        request_id: RequestId,
        events: Option<Arc<dyn EventSink>>,
    ) -> Self {
        let status = response.status();
        let class = meta.as_ref().map_or(SharedString::const_str("none"), |m| {
            class_label(m.class.as_str())
        });
        let model = meta
            .as_ref()
            .and_then(|m| m.model.as_deref())
            .map_or(SharedString::const_str("none"), model_label);
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
        metrics::gauge!(REQUESTS_IN_FLIGHT, "class" => class.clone()).increment(1.0);

        let observation = Self {
            start,
            endpoint,
            status,
            span,
            meta,
            request_id,
            events,
            class,
            model,
            first_byte: None,
            refused: reason.is_some(),
        };
        if observation.records_events(reason.is_some()) {
            let received_at = corral_core::unix_now() as f64 - start.elapsed().as_secs_f64();
            observation.event(NewEvent::new(
                "received",
                json!({"endpoint": endpoint.as_str(), "model": observation.meta.as_ref().map(|m| m.model_str()),
                       "priority": observation.meta.as_ref().map(|m| m.priority.get()), "class": &*observation.class,
                       "received_at": received_at}),
            ));
            if let Some(reason) = reason {
                observation.event(NewEvent::new(
                    "refused",
                    json!({"reason": reason, "status": status.as_u16()}),
                ));
            } else {
                let header =
                    |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                if let Some(queue_ms) =
                    header("x-corral-queue-ms").and_then(|v| v.parse::<u64>().ok())
                {
                    observation.event(NewEvent::new("dispatched", json!({"queue_ms": queue_ms})));
                }
                if let Some(cache) =
                    header("x-corral-cache").filter(|v| *v == "hit" || *v == "stale")
                {
                    observation.event(NewEvent::new("cache_hit", json!({"freshness": cache})));
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

    fn event(&self, event: NewEvent) {
        if let Some(events) = &self.events {
            events.record(event.about(self.agent(), self.request_id.as_str()));
        }
    }

    fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            let now = Instant::now();
            self.first_byte = Some(now);
            metrics::histogram!(TIME_TO_FIRST_BYTE_SECONDS, "endpoint" => self.endpoint.as_str(), "class" => self.class.clone())
                .record(now.duration_since(self.start).as_secs_f64());
        }
    }

    /// The answer ended: `completed`, `cancelled` (the client left) or
    /// `error` (the stream broke).
    pub(crate) fn finish(self, outcome: &'static str, usage: Usage) {
        let elapsed = self.start.elapsed();
        let endpoint = SharedString::const_str(self.endpoint.as_str());
        let status = status_label(self.status);
        match self.meta.as_ref().and_then(|m| agent_label(m.agent.as_str())) {
            Some(agent) => metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status,
                "class" => self.class.clone(), "agent" => agent)
            .increment(1),
            None => metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status,
                "class" => self.class.clone())
            .increment(1),
        }
        metrics::histogram!(REQUEST_DURATION_SECONDS, "endpoint" => endpoint, "model" => self.model.clone(),
            "class" => self.class.clone(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
        metrics::gauge!(REQUESTS_IN_FLIGHT, "class" => self.class.clone()).decrement(1.0);
        if let Some(generated) = usage.generated {
            metrics::counter!(TOKENS_GENERATED_TOTAL, "model" => self.model.clone(), "class" => self.class.clone())
                .increment(generated);
        }
        if let Some(prompt) = usage.prompt {
            metrics::counter!(PROMPT_TOKENS_TOTAL, "model" => self.model.clone(), "class" => self.class.clone())
                .increment(prompt);
        }
        self.span.record("duration_ms", millis(elapsed));
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
                self.event(NewEvent::new(
                    "first_byte",
                    json!({"ttfb_ms": millis(first.duration_since(self.start))}),
                ));
            }
            self.event(NewEvent::new(
                "completed",
                json!({"outcome": outcome, "status": self.status.as_u16(), "duration_ms": millis(elapsed),
                       "prompt_tokens": usage.prompt.unwrap_or(0), "generated_tokens": usage.generated.unwrap_or(0)}),
            ));
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
