//! A request dropped before its answer's headers: its client left while
//! it waited for a permit, or for a generation that sends nothing until
//! it is done.

use std::sync::Arc;

use corral_core::{Endpoint, EndpointKind, EventSink, MetaSlot, RequestId};
use tokio::time::Instant;
use tracing::Span;

use super::{access_logged, millis, received};
use crate::telemetry::request_metrics;

/// Held while the stack works on a request. Dropped before
/// [`answered`](Self::answered), the request is logged, counted in the
/// metrics as `cancelled` (status 499), and recorded as received and
/// then cancelled (no status, no tokens): usage and `/metrics` count it
/// as one request its client left, as they count one left midway.
pub(crate) struct Unanswered {
    start: Instant,
    endpoint: Endpoint,
    span: Span,
    slot: MetaSlot,
    request_id: RequestId,
    events: Arc<dyn EventSink>,
    answered: bool,
}

impl Unanswered {
    /// The request `request_id` to `endpoint`, received at `start`; what
    /// classify finds of it goes into `slot`.
    pub(crate) fn new(
        start: Instant,
        endpoint: Endpoint,
        span: Span,
        (slot, request_id): (MetaSlot, RequestId),
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            start,
            endpoint,
            span,
            slot,
            request_id,
            events,
            answered: false,
        }
    }

    /// The stack answered: the answer's own observation takes over.
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let since = self.start.elapsed();
        let elapsed = millis(since);
        let meta = self.slot.get();
        let agent = meta.map(|m| m.agent.as_str());
        request_metrics(
            self.endpoint,
            meta.map(|m| m.class.as_str()),
            meta.and_then(|m| m.model.as_deref()),
        )
        .left(agent, since.as_secs_f64());
        if access_logged() {
            self.span.record("duration_ms", elapsed);
        }
        tracing::info!(
            target: "corral::access",
            parent: &self.span,
            duration_ms = elapsed,
            outcome = "cancelled",
            "request left before its answer"
        );
        // As for answers: events for inference only.
        if self.endpoint.kind() != EndpointKind::Inference {
            return;
        }
        let agent = agent.unwrap_or("anonymous");
        let class = meta.map_or("none", |m| m.class.as_str());
        let id = self.request_id.as_str();
        let arrival = received(self.endpoint, meta, class, self.start);
        self.events.record_fields("received", agent, id, &arrival);
        self.events.record_fields(
            "completed",
            agent,
            id,
            &[
                ("outcome", "cancelled".into()),
                ("duration_ms", elapsed.into()),
                ("prompt_tokens", 0u64.into()),
                ("generated_tokens", 0u64.into()),
            ],
        );
    }
}
