use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use corral_core::{headers, AdmitThenCall, BoxError, WatchBody};
use http::{HeaderValue, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::{ResponseBody, Settling};
use crate::lengths::Learning;
use crate::permit::{Acquire, Permit};

pin_project! {
    /// The response future of [`PriorityService`](crate::PriorityService):
    /// waits for a permit (when the request needs one), then calls the
    /// inner service and hands the permit to the response body.
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        inner: AdmitThenCall<Acquire, S, R, F, Permit>,
        learning: Option<Learning>,
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    pub(crate) fn waiting(
        acquire: Acquire,
        inner: S,
        request: R,
        learning: Option<Learning>,
    ) -> Self {
        Self {
            inner: AdmitThenCall::admitting(acquire, inner, request),
            learning,
        }
    }

    pub(crate) fn refused(error: corral_core::BoxError) -> Self {
        Self {
            inner: AdmitThenCall::refused(error),
            learning: None,
        }
    }

    pub(crate) fn passing(future: F) -> Self {
        Self {
            inner: AdmitThenCall::calling(future, None),
            learning: None,
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
        let this = self.project();
        let (mut response, permit) = ready!(this.inner.poll(cx))?;
        if let Some(permit) = &permit {
            let waited = permit.waited().as_millis().to_string();
            if let Ok(value) = HeaderValue::from_str(&waited) {
                response
                    .headers_mut()
                    .insert(headers::X_CORRAL_QUEUE_MS, value);
            }
            if let Some(estimate) = permit.estimate() {
                for (name, value) in crate::estimate::headers(&estimate) {
                    response.headers_mut().insert(name, value);
                }
            }
        }
        let status = response.status();
        let learning = this.learning.take();
        let settling = permit.map(|p| Settling::new(p, status, learning));
        Poll::Ready(Ok(WatchBody::response(response, settling)))
    }
}
