//! A request dropped before its answer's headers: its client left while
//! it waited for a permit, or for a generation that sends nothing until
//! it is done.

use std::sync::Arc;

use corral_core::{Endpoint, EndpointKind, EventSink, MetaSlot, RequestId};
use tokio::time::Instant;
use tracing::Span;

use super::{access_logged, millis, received};

/// Held while the stack works on a request. Dropped before
/// [`answered`](Self::answered), the request is logged, and recorded as
/// received and then cancelled (no status, no tokens): usage counts it
/// as one request its client left, as it counts one left midway.
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
        let elapsed = millis(self.start.elapsed());
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
        let meta = self.slot.get();
        let agent = meta.map_or("anonymous", |m| m.agent.as_str());
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
