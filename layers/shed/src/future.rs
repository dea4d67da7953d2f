use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{AdmitThenCall, AgentId, BoxError, Priority};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::ShedReason;
use crate::gate::{wait_for_space, Admitted, Gate};

/// Waiting for room: admitted when there is some in time, refused when
/// not.
type Wait = Pin<Box<dyn Future<Output = Result<Admitted, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`ShedService`](crate::ShedService): waits
    /// for room in the queue (when the request may), then calls the inner
    /// service; the request counts as waiting until its answer starts.
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        inner: AdmitThenCall<Wait, S, R, F, Admitted>,
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    pub(crate) fn passing(future: F, admitted: Option<Admitted>) -> Self {
        Self {
            inner: AdmitThenCall::calling(future, admitted),
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            inner: AdmitThenCall::refused(error),
        }
    }

    pub(crate) fn waiting(
        gate: Arc<Gate>,
        inner: S,
        request: R,
        priority: Priority,
        agent: AgentId,
    ) -> Self {
        let wait = async move {
            if wait_for_space(gate.clone()).await {
                return Ok(gate.admit(&agent));
            }
            let load = gate.view().snapshot();
            let now = tokio::time::Instant::now();
            Err(gate
                .refuse(ShedReason::NoRoomInTime, priority, &load, now)
                .into())
        };
        Self {
            inner: AdmitThenCall::admitting(Box::pin(wait), inner, request),
        }
    }
}

impl<S, F, R, T, E> Future for ResponseFuture<S, F, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The answer has started: no longer waiting.
        let (answer, _admitted) = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(answer))
    }
}
