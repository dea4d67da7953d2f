use std::pin::Pin;
use std::task::{Context, Poll};

use corral_core::{Failure, Outcome};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::future::Call;

pin_project! {
    /// The response body of a call whose headers said success: a clean end
    /// is a success, a broken stream a failure, a client that leaves
    /// nothing.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, call: Option<Call>) -> Self {
        Self { inner, call }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(None) => call.record(Outcome::Success),
                Poll::Ready(Some(Err(_))) => call.record(Outcome::Failure(Failure::Stream)),
                Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                    call.record(Outcome::Success)
                }
                _ => {}
            }
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
