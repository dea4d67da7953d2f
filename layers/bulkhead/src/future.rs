use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use corral_core::{AdmitThenCall, BoxError, WatchBody};
use http::Response;
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::compartment::Slot;
use crate::error::CompartmentFull;

type Wait = Pin<Box<dyn Future<Output = Result<Slot, CompartmentFull>> + Send>>;

pin_project! {
    /// The response future of [`BulkheadService`](crate::BulkheadService):
    /// waits for a slot in the request's compartment (when it must), then
    /// calls the inner service and hands the slot to the response body.
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        inner: AdmitThenCall<Wait, S, R, F, Slot>,
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    pub(crate) fn calling(future: F, slot: Option<Slot>) -> Self {
        Self {
            inner: AdmitThenCall::calling(future, slot),
        }
    }

    pub(crate) fn waiting(wait: Wait, inner: S, request: R) -> Self {
        Self {
            inner: AdmitThenCall::admitting(wait, inner, request),
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            inner: AdmitThenCall::refused(error),
        }
    }
}

impl<S, F, R, B, E> Future for ResponseFuture<S, F, R>
where
    S: Service<R, Future = F, Response = Response<B>, Error = E>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (response, slot) = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(WatchBody::response(response, slot)))
    }
}
